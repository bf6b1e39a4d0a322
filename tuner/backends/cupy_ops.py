"""The cupy backend: tuner's CUDA decode kernels (kernels/*.cu), compiled by NVRTC through CuPy.

Each op has the signature of its torch twin in tuner.backends.torch_ops. Torch tensors go in as raw
pointers (no copies, no DLPack), every launch runs on torch's current stream (so CUDA-graph capture
records it), and outputs are allocated by torch. Kernels are compiled per variant (dtype, head size,
KV dtype, query-group size, batch rows) on first use and cached by CuPy on disk; warm up before
timing or capture. This module imports without CuPy and without a GPU: `sources()` and `NVRTC_OPTIONS`
are what the NVRTC compile tests use.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import torch

from . import torch_ops

NVRTC_OPTIONS = ("-std=c++17",)
HEAD_DIMS = (64, 128)
GROUPS = tuple(range(1, 9))  # query-group sizes the attention kernel serves; each is its own variant (3, 5, 6
# and 7 take the plain reduction, powers of two the transposed butterfly)
GEMV_ROWS = (1, 2, 4, 8)  # weight-only GEMV variants; more rows than 8 take torch's dequantized matmul
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}  # model dtypes the kernels run
KV_DTYPES = ("auto", "int8")  # KV-cache storage they read: the model dtype or int8
SCALARS = {DTYPES["bfloat16"]: 1, DTYPES["float16"]: 0}  # each dtype's SCALAR_BF16 define


def kernel_dir() -> Path:
    """kernels/ inside the installed package (the wheel), else beside it in a source checkout."""
    here = Path(__file__).resolve().parent.parent
    for d in (here / "kernels", here.parent / "kernels"):
        if (d / "common.cuh").exists():
            return d
    raise FileNotFoundError(f"tuner's CUDA sources (kernels/*.cu) are missing: looked in {here / 'kernels'} "
                            f"and {here.parent / 'kernels'}")


def source(file: str, **defines: int) -> str:
    """The full translation unit: defines, then common.cuh, then the kernel file (no #include needed)."""
    d = kernel_dir()
    head = "".join(f"#define {k} {v}\n" for k, v in sorted(defines.items()))
    return head + (d / "common.cuh").read_text() + "\n" + (d / file).read_text()


def variants() -> list[tuple[str, dict]]:
    """Every (file, defines) the backend can ask for: what the compile tests build."""
    out = []
    for s in SCALARS.values():
        out.append(("norm.cu", {"SCALAR_BF16": s}))
        for d in HEAD_DIMS:
            for kv in (0, 1):
                out.append(("rope_kv.cu", {"SCALAR_BF16": s, "HEAD_DIM": d, "KV_INT8": kv}))
                out += [("attention.cu", _attention_defines(s, d, kv, g)) for g in GROUPS]
        out += [("gemv.cu", {"SCALAR_BF16": s, "MMAX": m}) for m in GEMV_ROWS]
    out.append(("sampling.cu", {}))
    return out


def unsupported_config(dtype: str, kv_dtype: str) -> str | None:
    """Why the kernels cannot run this dtype and KV-cache storage, or None when they can."""
    if dtype not in DTYPES:
        return f"backend='cupy' runs dtype {' or '.join(map(repr, DTYPES))}, not {dtype!r}"
    if kv_dtype not in KV_DTYPES:
        return f"backend='cupy' stores the KV cache as kv_dtype {' or '.join(map(repr, KV_DTYPES))}, not {kv_dtype!r}"
    return None


def supported(head_dim: int, dtype: torch.dtype, n_heads: int, n_kv_heads: int) -> str | None:
    """Why the kernels cannot serve this model, or None when they can."""
    if dtype not in SCALARS:
        return unsupported_config(str(dtype).removeprefix("torch."), "auto")
    if head_dim not in HEAD_DIMS:
        return f"backend='cupy' serves head_dim {HEAD_DIMS}, this model has {head_dim}: use backend='torch'"
    if n_heads // n_kv_heads not in GROUPS:
        return (f"backend='cupy' serves query groups of 1 to {max(GROUPS)} heads, this model has "
                f"{n_heads // n_kv_heads}: use backend='torch'")
    return None


def stride_limit(n_kv_heads: int, head_dim: int, row_len: int) -> str | None:
    """Why the kernels cannot index a KV cache whose rows (a paged block, or a contiguous cache's sequence) hold
    `row_len` tokens, or None: attention computes a row's offset in 32 bits, so one row of every KV head,
    n_kv_heads x row_len x head_dim elements, must stay under 2**31."""
    per_row = n_kv_heads * row_len * head_dim
    if per_row < 2**31:
        return None
    most = (2**31 - 1) // (n_kv_heads * head_dim)
    return (f"backend='cupy' indexes a KV row with 32-bit offsets: {row_len} tokens x {n_kv_heads} KV heads x "
            f"head_dim {head_dim} = {per_row} elements per row; use rows of at most {most} tokens "
            "(block_size with kv_cache='paged', max_seq_len with 'contiguous') or backend='torch'")


# -- compile and launch --------------------------------------------------------------------------


@cache
def _function(file: str, name: str, defines: tuple):
    import cupy

    module = cupy.RawModule(code=source(file, **dict(defines)), options=NVRTC_OPTIONS, backend="nvrtc")
    return module.get_function(name)


def _kernel(file: str, name: str, **defines: int):
    return _function(file, name, tuple(sorted(defines.items())))


_streams: dict[int, object] = {}


def _stream():
    import cupy

    ptr = torch.cuda.current_stream().cuda_stream
    s = _streams.get(ptr)
    if s is None:
        s = _streams[ptr] = cupy.cuda.ExternalStream(ptr)
    return s


VECTOR = 16  # bytes: the kernels load and store 16-bit and int8 data 16 bytes at a time (uint4)


def _p(t: torch.Tensor | None, align: int = VECTOR, rows: bool = False):
    """The pointer a kernel gets for `t`, checked here, where every tensor is handed over: the kernels index it
    as dense memory (rows=True: rows may be strided, each row dense) aligned to `align` bytes (VECTOR for the
    vector-loaded data, an element for scalars and indices). A misaligned or strided view would read the wrong
    bytes, or fault, far from its cause."""
    import numpy as np

    if t is None:
        return np.uint64(0)
    ptr = t.data_ptr()
    dense = t.stride(-1) == 1 and (t.stride(0) * t.element_size()) % align == 0 if rows else t.is_contiguous()
    if ptr % align or not dense:
        why = f"starts {ptr % align} bytes past a {align}-byte boundary" if ptr % align else \
            f"has strides {tuple(t.stride())} for shape {tuple(t.shape)}"
        raise ValueError(f"backend='cupy' takes dense tensors aligned to {align} bytes; this {t.dtype} tensor {why}: "
                         "pass .contiguous() (a fresh copy) instead of a view")
    return np.uint64(ptr)


def _i(v: int):
    import numpy as np

    return np.int32(v)


def _l(v: int):
    import numpy as np

    return np.int64(v)


def _f(v: float):
    import numpy as np

    return np.float32(v)


def _launch(kernel, grid, block, args) -> None:
    kernel(grid, block, args, stream=_stream())


def _scalar(t: torch.Tensor) -> int:
    if t.dtype not in SCALARS:
        raise TypeError(f"the cupy kernels take bfloat16 or float16 tensors, got {t.dtype}")
    return SCALARS[t.dtype]


# -- ops (same signatures as the torch twins) --------------------------------------------------------


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    n = x.shape[-1]
    if n % 8 or n > 8 * 8 * 256:
        return torch_ops.add_rms_norm(x, delta, weight, eps)
    out = torch.empty_like(x)
    k = _kernel("norm.cu", "add_rms_norm", SCALAR_BF16=_scalar(x))
    _launch(k, (x.numel() // n,), (256,), (_p(x), _p(delta), _p(weight), _p(out), _i(n), _f(eps)))
    return x, out


def _kv_args(cache, layer: int):
    k, v = cache.k[layer], cache.v[layer]
    sx, sh, sy = k.stride(0), k.stride(1), k.stride(2)
    if cache.quantized:
        ks, vs = cache.k_scale[layer], cache.v_scale[layer]
        return (_p(k), _p(v), _p(ks, 4), _p(vs, 4), _l(sx), _l(sh), _l(sy), _l(ks.stride(0)), _l(ks.stride(1)))
    return (_p(k), _p(v), _p(None), _p(None), _l(sx), _l(sh), _l(sy), _l(0), _l(0))


def _kv_int8(cache) -> int:
    if cache.quantized and cache.store != torch.int8:
        raise ValueError(unsupported_config("bfloat16", str(cache.store).removeprefix("torch.")))
    return int(cache.quantized)


def rope_kv_write(qkv, qk_norm, eps, positions, cos, sin, cache, layer, tables, block_size, H, Hkv):
    B, D = qkv.shape[0], cos.shape[-1]
    q = torch.empty(B, H, D, dtype=qkv.dtype, device=qkv.device)
    k = _kernel("rope_kv.cu", "rope_kv_write", SCALAR_BF16=_scalar(qkv), HEAD_DIM=D, KV_INT8=_kv_int8(cache))
    args = (_p(qkv, rows=True), _l(qkv.stride(0)), _p(qk_norm), _f(eps), _p(positions, 4), _p(cos), _p(sin),
            *_kv_args(cache, layer), _p(tables, 4), _i(tables.shape[1]), _i(block_size), _p(q), _i(H), _i(Hkv))
    _launch(k, (B, -(-(H + 2 * Hkv) // 8)), (256,), args)
    return q


def blocks_per_sm(group: int) -> int:
    """Decode-attention blocks each SM holds, for a query group of `group` heads: the kernel is built to fit
    this many (its launch bounds), and the plan fills exactly these slots. Groups of up to 4 heads fit in 128
    registers a thread (4 blocks of 128 threads; 4 ran 1.4x faster than 2 on an H100); larger groups take up to
    243 registers (group 8, int8 KV), so 2 blocks."""
    return 4 if group <= 4 else 2


def _attention_defines(scalar: int, head_dim: int, kv_int8: int, group: int) -> dict:
    return dict(SCALAR_BF16=scalar, HEAD_DIM=head_dim, KV_INT8=kv_int8, G=group, MIN_BLOCKS=blocks_per_sm(group))


# tokens per partition at least: 256 ran the 1B model's short-context attention 1.7x slower (8 blocks); on an
# H200, 32 ran a 192-token batch-1 context in 6.4 us against 7.4 for 64 (gpu_suite-2026-11-26-h200-458af3a.json)
MIN_PART = 32


def part_size(pairs: int, max_len: int, slots: int, min_part: int = MIN_PART) -> int:
    """Tokens per partition for `pairs` (sequence, KV head) blocks over contexts of up to max_len, on a GPU
    holding `slots` resident blocks (SMs x blocks per SM): as many partitions as fill the slots once, never
    more. One block past the slots costs a whole second wave: at batch 8, context 16384, 9 partitions
    (576 blocks on an H200's 528 slots) ran 1.45x slower than 16 (2 full waves), NOTES-gpu.md entry 8."""
    parts = min(-(-max_len // min_part), max(1, slots // pairs))
    return -(-math.ceil(max_len / parts) // min_part) * min_part


class AttentionPlan:
    """How decode attention splits a batch's context (once per batch shape), and the buffers it needs."""

    def __init__(self, B: int, H: int, Hkv: int, D: int, max_len: int, device, waves: float | None = None,
                 min_part: int = MIN_PART, sms: int | None = None):
        sms = sms or torch.cuda.get_device_properties(device).multi_processor_count
        waves = blocks_per_sm(H // Hkv) if waves is None else waves
        self.part_size = part_size(B * Hkv, max_len, int(waves * sms), min_part)
        self.num_parts = -(-max_len // self.part_size)
        self.max_len = max_len
        n = B * H * self.num_parts
        self.part_out = torch.empty(n * D, dtype=torch.float32, device=device) if self.num_parts > 1 else None
        self.part_lse = torch.empty(max(n, 1), dtype=torch.float32, device=device)

    @property
    def capacity(self) -> int:
        """The longest context this plan's grid covers: num_parts x part_size tokens."""
        return self.num_parts * self.part_size

    def check(self, seq_len: int) -> None:
        """ValueError when a sequence of seq_len tokens is longer than the grid covers: the kernel would attend to
        its first `capacity` tokens only, silently."""
        if seq_len > self.capacity:
            raise ValueError(f"decode attention was planned for contexts of up to {self.capacity} tokens "
                             f"({self.num_parts} partitions of {self.part_size}), not {seq_len}: plan for the longest "
                             "sequence of the step")


def plan_attention(B: int, H: int, Hkv: int, D: int, max_len: int, device) -> AttentionPlan:
    return AttentionPlan(B, H, Hkv, D, max_len, device)


def block_shift(block_size: int, table_width: int) -> int:
    """log2 of a KV block's tokens, as the attention kernel indexes blocks (a shift and a mask, no division)."""
    if block_size & (block_size - 1) == 0:
        return block_size.bit_length() - 1
    if table_width == 1:  # a contiguous cache: one block holds the whole sequence
        return 30
    raise ValueError(f"backend='cupy' pages the KV cache in blocks of a power of two tokens, not {block_size}")


def decode_attention(q, cache, layer, tables, block_size, seq_lens, plan: AttentionPlan):
    B, H, D = q.shape
    Hkv = cache.k.shape[2]
    out = torch.empty(B, H * D, dtype=q.dtype, device=q.device)
    defines = _attention_defines(_scalar(q), D, _kv_int8(cache), H // Hkv)
    k = _kernel("attention.cu", "decode_attention", **defines)
    args = (_p(q), *_kv_args(cache, layer), _p(tables, 4), _i(tables.shape[1]),
            _i(block_shift(block_size, tables.shape[1])), _p(seq_lens, 4),
            _i(H), _i(Hkv), _f(D ** -0.5 * math.log2(math.e)), _i(plan.part_size), _p(out), _p(plan.part_out, 4),
            _p(plan.part_lse, 4))
    _launch(k, (Hkv, B, plan.num_parts), (128,), args)
    if plan.num_parts > 1:
        m = _kernel("attention.cu", "merge_parts", **defines)
        _launch(m, (H, B), (D,), (_p(plan.part_out, 4), _p(plan.part_lse, 4), _i(plan.num_parts), _i(H), _p(out)))
    return out


def _rows(M: int) -> int:
    return next(r for r in GEMV_ROWS if r >= M)


def int8_linear(x, q, scale, bias):
    M, K = x.shape
    N = q.shape[0]
    if M > max(GEMV_ROWS) or K % 16:
        return torch_ops.int8_linear(x, q, scale, bias)
    x = x.contiguous()
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    k = _kernel("gemv.cu", "int8_gemm", SCALAR_BF16=_scalar(x), MMAX=_rows(M))
    _launch(k, (-(-N // 16),), (256,), (_p(x), _p(q), _p(scale, 2), _p(bias, 2), _p(out, 2), _i(M), _i(N), _i(K)))
    return out


def int4_linear(x, packed, scale, zero, bias, group_size):
    M, K = x.shape
    N = packed.shape[0]
    if M > max(GEMV_ROWS) or K % 32 or group_size < 32:
        return torch_ops.int4_linear(x, packed, scale, zero, bias, group_size)
    x = x.contiguous()
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 1:  # batch-1 decode: integer dot products against x rounded to int8
        c = K // 32
        ws = torch.empty(K // 4 + 3 * c, dtype=torch.int32, device=x.device)  # xq words, scale, sum, qsum
        xq, xs, xsum, xqsum = ws[: K // 4], ws[K // 4: K // 4 + c], ws[K // 4 + c: K // 4 + 2 * c], ws[K // 4 + 2 * c:]
        q8 = _kernel("gemv.cu", "quantize_x_q8", SCALAR_BF16=_scalar(x), MMAX=1)
        _launch(q8, (-(-c // 8),), (256,), (_p(x), _p(xq), _p(xs, 4), _p(xsum, 4), _p(xqsum, 4), _i(K)))
        k = _kernel("gemv.cu", "int4_gemv_q8", SCALAR_BF16=_scalar(x), MMAX=1)
        _launch(k, (-(-N // 16),), (256,), (_p(xq), _p(xs, 4), _p(xsum, 4), _p(xqsum, 4), _p(packed), _p(scale, 2),
                                            _p(zero, 2), _p(bias, 2), _p(out, 2), _i(N), _i(K), _i(group_size)))
        return out
    k = _kernel("gemv.cu", "int4_gemm", SCALAR_BF16=_scalar(x), MMAX=_rows(M))
    _launch(k, (-(-N // 16),), (256,),
            (_p(x), _p(packed), _p(scale, 2), _p(zero, 2), _p(bias, 2), _p(out, 2), _i(M), _i(N), _i(K),
             _i(group_size)))
    return out


def linear(lin, x: torch.Tensor) -> torch.Tensor:
    """A model linear layer (tuner.backends.WeightLinear): weight-only int8/int4 through the GEMV kernels,
    everything else through torch."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if lin.scheme == "int8" and x2.shape[0] <= max(GEMV_ROWS):
        return int8_linear(x2, lin.weight, lin.scale, lin.bias).view(*shape[:-1], -1)
    if lin.scheme == "int4" and not lin.packed_cpu and x2.shape[0] <= max(GEMV_ROWS):
        return int4_linear(x2, lin.weight, lin.scale, lin.zero, lin.bias, lin.group_size).view(*shape[:-1], -1)
    return lin(x)


def sample_fused(logits: torch.Tensor, params, rng: torch.Tensor) -> torch.Tensor:
    logits = logits.float().contiguous()
    B, V = logits.shape
    out = torch.empty(B, dtype=torch.long, device=logits.device)
    if params.temperature == 0.0:
        _launch(_kernel("sampling.cu", "argmax_rows"), (B,), (1024,), (_p(logits), _i(V), _p(out, 8)))
        return out
    k = _kernel("sampling.cu", "sample_tokens")
    top_k = params.top_k if 0 < params.top_k < V else 0
    _launch(k, (B,), (1024,), (_p(logits), _i(V), _f(params.temperature), _i(top_k), _f(params.top_p),
                               _f(params.min_p), _p(rng, 8), _p(out, 8)))
    return out


def sample(logits: torch.Tensor, params, rng: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
    return torch_ops.sample(logits, params, rng, seen, fused=sample_fused)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1] // 2
    if n % 8 or x.dtype not in SCALARS:
        return torch_ops.silu_and_mul(x)
    x = x.contiguous()
    out = torch.empty(*x.shape[:-1], n, dtype=x.dtype, device=x.device)
    rows = x.numel() // (2 * n)
    _launch(_kernel("norm.cu", "silu_and_mul", SCALAR_BF16=_scalar(x)), (-(-n // 2048), rows), (256,),
            (_p(x), _p(out), _i(n)))
    return out

