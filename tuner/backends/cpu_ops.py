"""The cpu backend: the fused ops of the fixed-shape decode step (model.decode) as tuner's C kernels
(kernels/cpu_decode.c through tuner.backends.cpu_kernels), float32, with torch_ops' signatures.

A decode layer through torch_ops' unfused ops is about 20 torch calls besides its four matrix products, and on a
2-core CPU those cost more time than reading the layer's int8 weights; here a layer is four C calls and the
products (each linear layer's own kernel: oneDNN for float, tuner's int8/int4 kernels). Attention reads only
each sequence's own seq_len keys. Prefill and sampling stay torch_ops'. Like every backend this imports nothing
of tuner.
"""

from __future__ import annotations

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
