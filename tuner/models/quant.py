"""Linear layers: float, and weight-only int8 / int4 / fp8 that replace the float weight they quantize.

On CPU, float layers keep their weight prepacked for oneDNN (the path torch.compile's CPU freezing
takes), which streams weights 2-3x faster than `F.linear` at decode batch sizes (benchmarks/decode_cpu.py).
int8 and int4 decode rows run tuner's own CPU kernels (tuner.backends.cpu_kernels, float32 activations, each
weight byte read once) where they are faster than torch's packed kernels (`_weight_int8pack_mm`,
`_weight_int4pack_mm_for_cpu`, bf16 activations) on this CPU, timed once per shape; otherwise torch's.
Elsewhere a quantized layer dequantizes into the activation dtype and calls `F.linear` (correct,
not fast: the CuPy backend brings real GEMV kernels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backends import cpu_kernels
from ..knobs import ENGINE_KNOBS

INT4_GROUP_SIZES = ENGINE_KNOBS["group_size"].choices


def nbytes(tensors) -> int:
    """Storage bytes of `tensors`."""
    return sum(t.numel() * t.element_size() for t in tensors)


class Linear:
    """y = x W^T + b in the model dtype. `scheme` names how the weight is stored (tuner.backends.WeightLinear)."""

    scheme = "float"
    native = False  # decode rows through tuner's CPU kernel (the cpu backend's float32 layers)

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, native: bool = False):
        self.weight, self.bias = weight, bias
        if native:
            self.native = weight.device.type == "cpu" and weight.dtype == torch.float32 and \
                cpu_kernels.library() is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.native and x.numel() <= NATIVE_ROWS * x.shape[-1]:
            rows = x.reshape(-1, x.shape[-1]).contiguous()
            return cpu_kernels.f32_gemv(rows, self.weight, self.bias, checked=False).view(*x.shape[:-1], -1)
        return F.linear(x, self.weight, self.bias)

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in vars(self).values() if isinstance(t, torch.Tensor)]

    @property
    def nbytes(self) -> int:
        return nbytes(self.tensors())


def _row_chunks(weight: torch.Tensor, elements: int = 1 << 18):
    """(row slice, float32 rows) of `weight` in chunks of about `elements`, bounding quantization temporaries."""
    rows = max(1, elements // weight.shape[1])
    for r in range(0, weight.shape[0], rows):
        yield slice(r, r + rows), weight[r:r + rows].float()


class OneDNNLinear(Linear):
    """A float layer whose weight is prepacked in oneDNN's blocked layout (CPU only; the packed copy replaces it)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, 1)
        self.bias = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    @staticmethod
    def available(weight: torch.Tensor) -> bool:
        """Whether this torch build packs and runs `weight`'s dtype on this CPU (checked once per dtype)."""
        if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
            return False
        if weight.dtype not in _ONEDNN_OK:
            try:
                probe = torch.ones(16, 16, dtype=weight.dtype)
                out = OneDNNLinear(probe)(torch.ones(2, 16, dtype=weight.dtype))
                _ONEDNN_OK[weight.dtype] = bool((out == 16).all())
            except RuntimeError:
                _ONEDNN_OK[weight.dtype] = False
        return _ONEDNN_OK[weight.dtype]


_ONEDNN_OK: dict[torch.dtype, bool] = {}
_WINS: dict[tuple, bool] = {}


def first_wins(key: tuple, candidates) -> bool:
    """Whether the first of two ways to run a decode product is at least 5% faster on this CPU, timed once per key
    (and thread count): `candidates()` gives (first, second, multiply-adds per call) and is called only when the key
    is new; each runs in turn, best of 5 rounds of calls worth about 20M multiply-adds. CPUs differ in which way
    is faster (benchmarks/results/decode_cpu*.json)."""
    import time

    key = (*key, torch.get_num_threads())
    if key not in _WINS:
        first, second, macs = candidates()
        calls = max(4, min(64, int(2e7 // max(1, macs))))
        best = [float("inf"), float("inf")]
        for _ in range(5):
            for i, fn in enumerate((first, second)):
                t = time.perf_counter()
                for _ in range(calls):
                    fn()
                best[i] = min(best[i], time.perf_counter() - t)
        _WINS[key] = best[0] < 0.95 * best[1]
    return _WINS[key]


def packed_wins(weight: torch.Tensor) -> bool:
    """Whether oneDNN's packed layout runs a one-row product with a weight of this shape faster than F.linear: 2-3x
    faster on one 2-core AMD EPYC VM, 1.6x slower on one 2-core Intel Xeon VM."""

    def candidates():
        w = torch.randn(weight.shape, dtype=weight.dtype) * 0.02
        packed, x = OneDNNLinear(w), torch.randn(1, w.shape[1], dtype=w.dtype)
        return (lambda: packed(x)), (lambda: F.linear(x, w)), w.numel()

    return first_wins(("onednn", weight.dtype, tuple(weight.shape)), candidates)


NATIVE_ROWS = cpu_kernels.NATIVE_ROWS  # rows up to which a float layer runs tuner's CPU kernel (decode)
# Rows up to which an int8 / int4 layer on tuner's layout runs its kernel (a pass over the weight per 8 rows);
# more rows (a prefill) take the weight dequantized in C and torch's matrix product, which reuses it across them.
# Crossovers on SmolLM2's 3072 x 576 and 576 x 1536 weights (2 threads, 2-core Xeon VM): int8 even at 96 rows
# (2.86 against 2.76 ms), the kernel 1.4x faster at 64; int4 the kernel 1.2x faster at 129 rows, dequantized 1.1x
# faster at 256.
KERNEL_ROWS = {"int8": 64, "int4": 128}


def native_wins(scheme: str, shape: tuple, group_size: int = 0) -> bool:
    """Whether tuner's CPU kernel (tuner.backends.cpu_kernels) runs a one-row product of this int8 or int4 weight
    shape at least 5% faster than torch's packed kernel on this CPU (timed once per shape); False where the
    kernel cannot be built here. torch's int4 kernel needs N % 16 == 0: other shapes take tuner's kernel."""
    if cpu_kernels.library() is None:
        return False
    N, K = shape
    if scheme == "int4" and N % 16:
        return True

    def candidates():
        x = torch.randn(1, K)
        if scheme == "int8":
            q, scale = torch.randint(-127, 128, (N, K), dtype=torch.int8), torch.rand(N).bfloat16()
            q16, s16 = cpu_kernels.pack_int8(q, scale)
            return ((lambda: cpu_kernels.int8_gemv(x, q16, s16, None, N)),
                    (lambda: torch.ops.aten._weight_int8pack_mm(x.bfloat16(), q, scale).float()), N * K)
        nib, scale, zero = cpu_kernels.pack_int4(torch.randint(0, 256, (N, K // 2), dtype=torch.uint8),
                                                 *[torch.rand(N, K // group_size).bfloat16()] * 2)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (N, K), dtype=torch.int32), 2)
        sz = torch.rand(K // group_size, N, 2).bfloat16()
        return ((lambda: cpu_kernels.int4_gemv(x, nib, scale, zero, None, group_size, N)),
                (lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x.bfloat16(), packed, group_size, sz).float()),
                N * K)

    return first_wins(("native", scheme, N, K, group_size), candidates)


def _native(asked: bool | None, scheme: str, shape: tuple, group_size: int = 0) -> bool:
    """Whether a quantized layer takes tuner's CPU kernel: asked for (True, where it can be built), never (False),
    or (None) where it is the faster here."""
    if asked is None:
        return native_wins(scheme, shape, group_size)
    return asked and cpu_kernels.library() is not None


class TiedLMHead(Linear):
    """The output projection sharing the float embedding table [vocab, dim], which stays unpacked so the
    embedding can read its rows. Where it is faster on this CPU (timed once per shape), 1-3 rows are computed as
    W @ x^T padded to 4 rows: MKL streamed the table about 2.5x faster that way on a 2-core AMD EPYC VM, and 3.5x
    slower on a 2-core Intel Xeon VM, where F.linear is used."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__(weight, bias)
        cpu32 = weight.device.type == "cpu" and weight.dtype == torch.float32
        self.padded = cpu32 and _padded_wins(weight)
        # 4+ rows (a batch of decodes): tuner's kernel, which reads each table row once for all rows of x, where it
        # beats F.linear at 8 rows on this CPU (9.6 against 22.0 ms for SmolLM2's 49152 x 576 on a 2-core Xeon VM)
        self.wide = cpu32 and bias is None and _wide_wins(weight)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.wide and x.numel() >= WIDE_ROWS * x.shape[-1]:
            rows = x.reshape(-1, x.shape[-1]).contiguous()
            if rows.shape[0] <= NATIVE_ROWS:
                return cpu_kernels.f32_gemv(rows, self.weight).view(*x.shape[:-1], -1)
        if not self.padded:
            return F.linear(x, self.weight)
        rows = x.reshape(-1, x.shape[-1])
        n = rows.shape[0]
        if n < 4:
            rows = torch.cat([rows, rows.new_zeros(4 - n, rows.shape[1])])
        return torch.mm(self.weight, rows.t()).t()[:n].reshape(*x.shape[:-1], -1)


WIDE_ROWS = 4  # rows from which the tied head may take tuner's kernel: SmolLM2's 49152 x 576 at 4 rows took 8.3 ms
# there against 13.8 for F.linear on a 2-core Xeon VM (1-3 rows: even, within 5%)


def _wide_wins(weight: torch.Tensor) -> bool:
    if cpu_kernels.library() is None:
        return False

    def candidates():
        x8 = torch.randn(8, weight.shape[1])
        return (lambda: cpu_kernels.f32_gemv(x8, weight)), (lambda: F.linear(x8, weight)), 8 * weight.numel()

    return first_wins(("tied-c8", weight.dtype, tuple(weight.shape)), candidates)


def _padded_wins(weight: torch.Tensor) -> bool:
    def candidates():
        x1, x4 = torch.randn(1, weight.shape[1]), torch.randn(4, weight.shape[1])
        return (lambda: torch.mm(weight, x4.t())), (lambda: F.linear(x1, weight)), weight.numel()

    return first_wins(("tied-mm4", weight.dtype, tuple(weight.shape)), candidates)


class Embedding:
    """Token rows of a float table."""

    def __init__(self, table: torch.Tensor):
        self.table = table

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.table)

    def tensors(self) -> list[torch.Tensor]:
        return [self.table]


class Int8Linear(Linear):
    """Symmetric int8 per output channel: W ~= q * scale[n]."""

    scheme = "int8"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, native: bool | None = None):
        self.dtype, self.bias = weight.dtype, bias
        self.cpu = weight.device.type == "cpu"
        scale_dtype = torch.bfloat16 if self.cpu else weight.dtype  # both CPU kernels read bf16 scales
        # tuner's kernel for decode rows (its layout: blocks of 16 interleaved rows): asked for, or the faster here
        self.native = self.cpu and _native(native, "int8", weight.shape)
        self.weight = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
        self.scale = torch.empty(weight.shape[0], dtype=scale_dtype, device=weight.device)
        for rows, w in _row_chunks(weight):
            scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-10).to(scale_dtype)
            self.scale[rows] = scale
            self.weight[rows] = (w / scale.float()[:, None]).round_().clamp_(-127, 127)
        self.shape = tuple(weight.shape)
        if self.native:  # the kernel's blocks of 16 interleaved rows: [N/16, K, 16], scale [N/16 * 16]
            self.weight, self.scale = cpu_kernels.pack_int8(self.weight, self.scale)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if self.native and x.numel() <= KERNEL_ROWS[self.scheme] * shape[-1]:  # its own tensors: right by construction
            y = cpu_kernels.int8_gemv(x.reshape(-1, shape[-1]).float().contiguous(), self.weight, self.scale, None,
                                      self.shape[0], checked=False)
            y = y.to(x.dtype).view(*shape[:-1], -1)
        elif self.native:  # a prefill's rows: the dequantized weight, reused across them
            y = F.linear(x, self.dequantize().to(x.dtype))
        elif self.cpu:
            y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(torch.bfloat16), self.weight, self.scale)
            y = y.to(x.dtype).view(*shape[:-1], -1)
        else:
            y = F.linear(x, self.weight.to(x.dtype)) * self.scale
        return y if self.bias is None else y + self.bias

    def rows(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q [*, K], scale [*]) of the output rows `index`, in either layout."""
        if self.native:
            return self.weight[index // 16, :, index % 16], self.scale[index]
        return self.weight[index], self.scale[index]

    def dequantize(self) -> torch.Tensor:
        if self.native:  # the kernel's layout, undone in C: the same bits as the formula below
            return cpu_kernels.int8_dequant(self.weight, self.scale, self.shape[0]).to(self.dtype)
        return (self.weight.float() * self.scale.float()[:, None]).to(self.dtype)


class Int8Embedding:
    """Token rows of a tied int8 output projection, dequantized: one int8 table serves both ends of the model."""

    def __init__(self, head: Int8Linear):
        self.head = head

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        q, scale = self.head.rows(tokens)
        return q.to(self.head.dtype) * scale[..., None].to(self.head.dtype)

    def tensors(self) -> list[torch.Tensor]:
        return self.head.tensors()


class Int4Linear(Linear):
    """Asymmetric int4 in groups of `group_size` along the input: W ~= (q - 8) * scale + zero, q in [0, 15]."""

    scheme = "int4"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group_size: int,
                 native: bool | None = None):
        N, K = weight.shape
        if group_size not in INT4_GROUP_SIZES or K % group_size:
            raise ValueError(f"group_size={group_size} does not divide the input width {K}: "
                             f"use one of {[g for g in INT4_GROUP_SIZES if K % g == 0]}")
        self.dtype, self.bias, self.group_size = weight.dtype, bias, group_size
        # The CPU kernel reads bf16 scales and zeros; round them first so q is computed against what is stored.
        store = torch.bfloat16 if weight.device.type == "cpu" else weight.dtype
        q = torch.empty(N, K, dtype=torch.uint8, device=weight.device)
        scale = torch.empty(N, K // group_size, dtype=store, device=weight.device)
        zero = torch.empty_like(scale)
        for rows, w in _row_chunks(weight):
            w = w.view(w.shape[0], K // group_size, group_size)
            lo, hi = w.amin(dim=2), w.amax(dim=2)
            s = ((hi - lo) / 15.0).clamp(min=1e-10).to(store).float()
            z = (lo + 8.0 * s).to(store).float()
            scale[rows], zero[rows] = s, z
            q[rows] = ((w - (z - 8.0 * s)[..., None]) / s[..., None]).round_().clamp_(0, 15).view(-1, K)
        # tuner's CPU kernel where asked for or faster here than torch's, which needs N % 16 == 0; other shapes
        # take the dequantizing path
        cpu = weight.device.type == "cpu"
        self.native = cpu and _native(native, "int4", (N, K), group_size)
        self.packed_cpu = cpu and N % 16 == 0 and not self.native
        if self.packed_cpu:
            self.weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 2)
            self.scales_zeros = torch.stack([scale.t(), zero.t()], dim=-1).contiguous()  # [K/g, N, 2]
        else:
            self.weight = q[:, 0::2] | (q[:, 1::2] << 4)  # two nibbles per byte, [N, K/2]
            self.scale, self.zero = scale, zero  # [N, K/g]
            if self.native:  # the kernel's blocks of 16 interleaved rows: [N/16, K/2, 16], scale, zero [N/16, K/g, 16]
                self.weight, self.scale, self.zero = cpu_kernels.pack_int4(self.weight, scale, zero)
        self.shape = (N, K)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if self.native and x.numel() <= KERNEL_ROWS[self.scheme] * shape[-1]:
            y = cpu_kernels.int4_gemv(x.reshape(-1, shape[-1]).float().contiguous(), self.weight, self.scale,
                                      self.zero, None, self.group_size, self.shape[0], checked=False)
            y = y.to(x.dtype).view(*shape[:-1], -1)
        elif self.packed_cpu:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x.reshape(-1, shape[-1]).to(torch.bfloat16), self.weight, self.group_size, self.scales_zeros
            )
            y = y.to(x.dtype).view(*shape[:-1], -1)
        else:
            y = F.linear(x, self.dequantize().to(x.dtype))
        return y if self.bias is None else y + self.bias

    def dequantize(self) -> torch.Tensor:
        N, K = self.shape
        g = self.group_size
        if self.packed_cpu:
            # Recover the weight through the kernel itself: x = identity.
            eye = torch.eye(K, dtype=torch.bfloat16)
            w = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.weight, g, self.scales_zeros).t()
            return w.to(self.dtype)
        if self.native:  # the kernel's layout, undone in C: the same bits as the formula below
            return cpu_kernels.int4_dequant(self.weight, self.scale, self.zero, g, N).to(self.dtype)
        nib = self.weight
        q = torch.stack([nib & 15, nib >> 4], dim=-1).view(N, K // g, g).float()
        w = (q - 8.0) * self.scale.float()[..., None] + self.zero.float()[..., None]
        return w.view(N, K).to(self.dtype)


class Fp8Linear(Linear):
    """fp8 e4m3 per output channel: W ~= q * scale[n] (GPUs with compute capability 8.9+)."""

    scheme = "fp8"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        self.dtype, self.bias = weight.dtype, bias
        w = weight.float()
        self.scale = (w.abs().amax(dim=1) / 448.0).clamp(min=1e-12)
        self.weight = (w / self.scale[:, None]).to(torch.float8_e4m3fn)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias

    def dequantize(self) -> torch.Tensor:
        return (self.weight.float() * self.scale[:, None]).to(self.dtype)


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None, quant: str, group_size: int,
                native: bool = False) -> Linear:
    """Wrap a float weight [out, in]; a quantized or packed layer keeps only its own copy. native=True (the cpu
    backend, whose C decode step reads the weights itself): a float32 weight stays plain, and int8 / int4 layers
    take tuner's CPU kernels for decode rows without timing them against torch's (so the per-op step and the one-call
    C step run the same products)."""
    if quant == "none":
        if native and weight.dtype == torch.float32:
            return Linear(weight, bias, native=True)
        if OneDNNLinear.available(weight) and (weight.dtype != torch.float32 or packed_wins(weight)):
            return OneDNNLinear(weight, bias)  # 16-bit CPU matmuls outside oneDNN are torch's slow loop
        return Linear(weight, bias)
    if quant == "int8":
        return Int8Linear(weight, bias, native or None)
    if quant == "int4":
        return Int4Linear(weight, bias, group_size, native or None)
    if quant == "fp8":
        return Fp8Linear(weight, bias)
    raise ValueError(f"quant={quant!r} is not allowed: use 'none', 'int8', 'int4' or 'fp8'")
