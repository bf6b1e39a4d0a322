"""The cpu backend: the fused ops of the fixed-shape decode step (model.decode) as tuner's C kernels
(kernels/cpu_decode.c through tuner.backends.cpu_kernels), float32, with torch_ops' signatures.

A decode layer through torch_ops' unfused ops is about 20 torch calls besides its four matrix products, and on a
2-core CPU those cost more time than reading the layer's int8 weights; here a layer is four C calls and the
products (each linear layer's own kernel: oneDNN for float, tuner's int8/int4 kernels). Attention reads only
each sequence's own seq_len keys. Prefill and sampling stay torch_ops'. Like every backend this imports nothing
of tuner.
"""

from __future__ import annotations

import ctypes
import weakref

import torch

from . import cpu_kernels
from .torch_ops import plan_attention  # noqa: F401  (no plan is needed here either)

MAX_HEAD_DIM = 1024  # the rope kernel's row buffer (float x[1024] in tuner_rope_kv_write); checked by EngineConfig


def _f32(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous CPU float32 tensor, got {t.device.type} {t.dtype}"
                         f"{'' if t.is_contiguous() else ' (strided)'}")
    return t


def _i32(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.dtype != torch.int32 or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous int32 tensor, got {t.dtype}")
    return t


def _pools(cache, layer: int):
    if cache.quantized:
        raise ValueError("backend='cpu' needs a float32 KV cache (kv_dtype='auto')")
    k, v = cache.k[layer], cache.v[layer]
    _f32(k, "the K pool"), _f32(v, "the V pool")
    return k, v, k.stride(0), k.stride(1), k.stride(2)


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x += delta in place (if given), then (x, rms_norm(x) * weight); x [B, dim]."""
    _f32(x, "x"), _f32(weight, "the norm weight")
    if delta is not None:
        _f32(delta, "delta")
    h = torch.empty_like(x)
    cpu_kernels.library().tuner_add_rms_norm(x.data_ptr(), None if delta is None else delta.data_ptr(),
                                             weight.data_ptr(), eps, h.data_ptr(), x.shape[0], x.shape[-1])
    return x, h


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [B, 2F] (gate, up) -> silu(gate) * up [B, F]."""
    x = _f32(x.reshape(-1, x.shape[-1]), "x")
    out = torch.empty(x.shape[0], x.shape[1] // 2)
    cpu_kernels.library().tuner_silu_mul(x.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1] // 2)
    return out


def rope_kv_write(qkv: torch.Tensor, qk_norm: torch.Tensor | None, eps: float, positions: torch.Tensor,
                  cos: torch.Tensor, sin: torch.Tensor, cache, layer: int, tables: torch.Tensor, block_size: int,
                  H: int, Hkv: int) -> torch.Tensor:
    """q/k norm (Qwen3), RoPE on q and k, K/V written to the cache. qkv [B, (H+2Hkv)*D] -> q [B, H, D]."""
    B, D = qkv.shape[0], cos.shape[-1]
    if qkv.dtype != torch.float32 or qkv.stride(-1) != 1:
        raise ValueError(f"qkv must be float32 rows with dense columns, got {qkv.dtype} strides {qkv.stride()}")
    k, v, sx, sh, sy = _pools(cache, layer)
    q = torch.empty(B, H, D)
    norm = None if qk_norm is None else _f32(qk_norm, "qk_norm").data_ptr()
    cpu_kernels.library().tuner_rope_kv_write(
        qkv.data_ptr(), qkv.stride(0), norm, eps, _i32(positions, "positions").data_ptr(), _f32(cos, "cos").data_ptr(),
        _f32(sin, "sin").data_ptr(), k.data_ptr(), v.data_ptr(), sx, sh, sy, _i32(tables, "tables").data_ptr(),
        tables.shape[1], block_size, q.data_ptr(), B, H, Hkv, D)
    return q


def decode_attention(q: torch.Tensor, cache, layer: int, tables: torch.Tensor, block_size: int,
                     seq_lens: torch.Tensor, plan=None) -> torch.Tensor:
    """One new query per sequence over its first seq_lens[b] cached keys; q [B, H, D] -> [B, H*D]."""
    B, H, D = q.shape
    k, v, sx, sh, sy = _pools(cache, layer)
    out = torch.empty(B, H * D)
    if cpu_kernels.library().tuner_decode_attention(
            _f32(q, "q").data_ptr(), k.data_ptr(), v.data_ptr(), sx, sh, sy, _i32(tables, "tables").data_ptr(),
            tables.shape[1], block_size, _i32(seq_lens, "seq_lens").data_ptr(), out.data_ptr(), B, H, k.shape[1], D):
        raise MemoryError("decode_attention: no memory for its scores")
    return out


def linear(lin, x: torch.Tensor) -> torch.Tensor:
    return lin(x)


def _linear(lin) -> cpu_kernels.Linear | None:
    """A layer's weight as the C step reads it, or None where the layer does not run tuner's kernels (`native`:
    a model built for another backend may hold oneDNN-packed float weights or torch's int4 layout)."""
    L, w, b = cpu_kernels.Linear, lin.weight, lin.bias
    if b is not None and (b.dtype != torch.float32 or not b.is_contiguous()):
        return None
    bias = None if b is None else b.data_ptr()
    if not getattr(lin, "native", False) or w.device.type != "cpu" or w.layout != torch.strided or \
            not w.is_contiguous():
        return None
    N = w.shape[0]
    if lin.scheme == "float" and w.dtype == torch.float32:
        return L(L.FLOAT, N, w.shape[1], 0, w.data_ptr(), None, None, bias)
    if lin.scheme == "int8":
        return L(L.INT8, lin.shape[0], w.shape[1], 0, w.data_ptr(), lin.scale.data_ptr(), None, bias)
    if lin.scheme == "int4":
        return L(L.INT4, lin.shape[0], w.shape[1] * 2, lin.group_size, w.data_ptr(), lin.scale.data_ptr(),
                 lin.zero.data_ptr(), bias)
    return None


_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # cache -> (layers, (K pool, heads), C layers)


def _step_layers(layers, cache, H: int, Hkv: int, D: int):
    """The C descriptors of `layers` over `cache`, made once per (model, cache); None where a layer cannot run in
    the C step. The C step sizes its buffers from layer 0, so every layer's shapes are checked against it."""
    got, key = _STEPS.get(cache), (cache.k.data_ptr(), H, Hkv, D)
    if got is not None and got[0] is layers and got[1] == key:
        return got[2]
    arr = (cpu_kernels.Layer * len(layers))()
    for i, layer in enumerate(layers):
        lins = [_linear(lin) for lin in (layer.wqkv, layer.wo, layer.w13, layer.w2)]
        if any(lin is None for lin in lins):
            arr = None
            break
        qkv, o, gu, down = lins
        dim = o.N
        shapes = ((qkv.N, qkv.K, o.K, gu.K, gu.N, down.N), ((H + 2 * Hkv) * D, dim, H * D, dim, 2 * down.K, dim))
        if shapes[0] != shapes[1]:
            raise ValueError(f"layer {i}: linear shapes (qkv out/in, o in, gate_up in/out, down out) {shapes[0]} do "
                             f"not fit heads {H}/{Hkv} of size {D}: expected {shapes[1]}")
        k, v, *_ = _pools(cache, i)
        qk = None if layer.qk_norm is None else _f32(layer.qk_norm, "qk_norm").data_ptr()
        arr[i] = cpu_kernels.Layer(_f32(layer.attn_norm, "attn_norm").data_ptr(),
                                   _f32(layer.mlp_norm, "mlp_norm").data_ptr(), qk, k.data_ptr(), v.data_ptr(), *lins)
    _STEPS[cache] = (layers, key, arr)
    return arr


def decode_layers(layers, final_norm: torch.Tensor, eps: float, st, cache, x: torch.Tensor, H: int,
                  Hkv: int) -> torch.Tensor | None:
    """model.decode's layers in one C call (tuner_decode_layers: the ops above and the products, in the same
    order, with no return to Python between them): x [B, dim] the embedded tokens, updated in place to the last
    residual; returns final_norm(x) [B, dim]. None where this step cannot run so (a layer's weight in a form the
    kernels do not read, or more than NATIVE_ROWS sequences): the caller then runs the ops one by one."""
    B = x.shape[0]
    if B > cpu_kernels.NATIVE_ROWS or cache.quantized:
        return None
    D = st.cos.shape[-1]
    arr = _step_layers(layers, cache, H, Hkv, D)
    if arr is None:
        return None
    k, _, sx, sh, sy = _pools(cache, 0)
    if _f32(x, "x").dim() != 2 or x.shape[1] != arr[0].o.N:
        raise ValueError(f"x must be [B, {arr[0].o.N}], got {tuple(x.shape)}")
    h = torch.empty_like(x)
    rc = cpu_kernels.library().tuner_decode_layers(
        ctypes.addressof(arr), len(layers), _f32(final_norm, "the final norm").data_ptr(), eps, x.data_ptr(),
        h.data_ptr(), _i32(st.positions, "positions").data_ptr(), _i32(st.seq_lens, "seq_lens").data_ptr(),
        _i32(st.tables, "tables").data_ptr(), st.tables.shape[1], st.block_size, sx, sh, sy,
        _f32(st.cos, "cos").data_ptr(), _f32(st.sin, "sin").data_ptr(), B, H, Hkv, D)
    if rc:
        raise MemoryError("decode_layers: no memory for the step's activations") if rc == -1 else \
            RuntimeError(f"decode_layers: the C step returned {rc}")
    return h
