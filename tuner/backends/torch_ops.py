"""The torch reference backend: the ops a decoder layer is made of, in plain PyTorch.

It runs on CPU and GPU and is the truth every CuPy kernel is checked against. Like every backend it imports
nothing of tuner: the KV cache and the weight types come in as arguments (see tuner.backends).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def head_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over head_dim of x [..., heads, head_dim] with one weight row per head ([heads, head_dim])."""
    return F.rms_norm(x, (x.shape[-1],), None, eps) * weight


def rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in the rotate-half convention; x [B, T, heads, D], cos/sin_signed [B, T, 1, D].

    x*cos + rotate_half(x)*sin equals x*cos + roll(x, D/2)*sin_signed with sin_signed = [-sin1, sin2].
    """
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), sin_signed)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention without repeating K/V.

    q [B, T, H, D]; k, v [B, Hkv, L, D] (any strides); mask bool [B, 1, G*T, L] (True attends) or None.
    The G = H/Hkv query heads that share a KV head are folded into the query rows, so each KV head
    is read once. Returns [B, T, H*D].
    """
    B, T, H, D = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    if T == 1:
        # Decode: batched matmuls over (sequence, KV head) run faster on CPU than SDPA's kernel for G query rows.
        kb, vb = k.reshape(B * Hkv, -1, D), v.reshape(B * Hkv, -1, D)
        scores = torch.bmm(q.reshape(B * Hkv, G, D), kb.transpose(1, 2)).mul_(D**-0.5)
        if mask is not None:
            scores.view(B, Hkv, G, -1).masked_fill_(~mask, float("-inf"))
        out = torch.bmm(scores.softmax(dim=-1, dtype=torch.float32).to(vb.dtype), vb)
        return out.view(B, 1, H * D)
    q = q.view(B, T, Hkv, G, D).permute(0, 2, 3, 1, 4).reshape(B, Hkv, G * T, D)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return o.view(B, Hkv, G, T, D).permute(0, 3, 1, 2, 4).reshape(B, T, H * D)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


# -- twins of the fused CuPy decode kernels (kernels/*.cu); the same signatures as tuner.backends.cupy_ops ----


def add_rms_norm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x += delta in place (if given), then (x, rms_norm(x) * weight). Twin of kernels/norm.cu."""
    if delta is not None:
        x.add_(delta)
    return x, rms_norm(x, weight, eps)


def rope_kv_write(qkv: torch.Tensor, qk_norm: torch.Tensor | None, eps: float, positions: torch.Tensor,
                  cos: torch.Tensor, sin: torch.Tensor, cache, layer: int, tables: torch.Tensor, block_size: int,
                  H: int, Hkv: int) -> torch.Tensor:
    """Decode: q/k norm (Qwen3), RoPE on q and k, K/V written to the cache. qkv [B, (H+2Hkv)*D] -> q [B, H, D].

    Token b is at positions[b]; its slot is tables[b, p // block_size] at p % block_size. Twin of
    kernels/rope_kv.cu.
    """
    B = qkv.shape[0]
    x = qkv.view(B, H + 2 * Hkv, -1)
    qk = x[:, : H + Hkv]
    if qk_norm is not None:
        qk = head_rms_norm(qk, qk_norm, eps)
    pos = positions.long()
    qk = rope(qk[:, None], cos[pos][:, None, None], sin[pos][:, None, None])[:, 0]
    blk = tables.long()[torch.arange(B, device=qkv.device), pos // block_size]
    cache.write(layer, qk[:, H:], x[:, H + Hkv:], (blk, pos % block_size))
    return qk[:, :H]


def decode_attention(q: torch.Tensor, cache, layer: int, tables: torch.Tensor, block_size: int,
                     seq_lens: torch.Tensor, plan=None) -> torch.Tensor:
    """Attention of one new query per sequence over its cached context; q [B, H, D] -> [B, H*D].

    Reads every block in `tables`, masked to seq_lens[b] keys. Twin of kernels/attention.cu.
    """
    k, v = cache.gather(layer, tables)
    mask = (torch.arange(k.shape[2], device=q.device)[None, :] < seq_lens[:, None].long())[:, None, None, :]
    out = attention(q[:, None], k.to(q.dtype), v.to(q.dtype), mask)[:, 0]
    return out.masked_fill_((seq_lens == 0)[:, None], 0.0)  # no keys: zeros, as the kernel writes (not NaN)


def plan_attention(B: int, H: int, Hkv: int, D: int, max_len: int, device) -> None:
    """The torch twin needs no plan."""
    return None


def linear(lin, x: torch.Tensor) -> torch.Tensor:
    return lin(x)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF/vLLM rule on tokens already in the sequence: positive logits / penalty, negative ones * penalty."""
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def _i64(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


def _srl(x: torch.Tensor, s: int) -> torch.Tensor:
    return (x >> s) & ((1 << (64 - s)) - 1)  # logical shift right of int64 bit patterns


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 on int64 tensors holding uint64 bit patterns (wrapping arithmetic)."""
    x = x + _i64(0x9E3779B97F4A7C15)
    x = (x ^ _srl(x, 30)) * _i64(0xBF58476D1CE4E5B9)
    x = (x ^ _srl(x, 27)) * _i64(0x94D049BB133111EB)
    return x ^ _srl(x, 31)


def fused_keep(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """The tokens kernels/sampling.cu keeps [B, V] bool: top-k, then top-p on fixed-point masses, then min-p."""
    B, V = logits.shape
    z = (logits - logits.amax(dim=-1, keepdim=True)) * (1.0 / temperature)
    keep = torch.ones_like(logits, dtype=torch.bool)
    if 0 < top_k < V:
        keep &= logits >= logits.topk(top_k, dim=-1).values[:, -1:]
    top_p = float(torch.tensor(top_p, dtype=torch.float32))  # the kernel takes it as float32
    if top_p < 1.0:
        mass = torch.where(keep, (torch.exp(z) * 16777216.0).floor().long(), 0)
        total = mass.sum(dim=-1)
        want = torch.tensor([math.ceil(top_p * float(t)) for t in total.tolist()], device=logits.device).clamp(min=1)
        order = logits.argsort(dim=-1, descending=True, stable=True)
        cum = mass.gather(-1, order).cumsum(dim=-1)
        first = (cum >= want[:, None]).int().argmax(dim=-1)  # first sorted position reaching the mass
        threshold = logits.gather(-1, order.gather(-1, first[:, None]))
        keep &= logits >= threshold
    if min_p > 0.0:
        keep &= torch.exp(z) >= min_p
    return keep


def sample_fused(logits: torch.Tensor, params, rng: torch.Tensor) -> torch.Tensor:
    """Twin of kernels/sampling.cu: argmax or the exponential race with splitmix64 noise from rng = [seed, offset, 0].

    Advances rng[1] by one, as the kernel does.
    """
    if params.temperature == 0.0:
        return logits.argmax(dim=-1)
    B, V = logits.shape
    keep = fused_keep(logits, params.temperature, params.top_k, params.top_p, params.min_p)
    seed, offset = rng[0], rng[1]
    row_key = splitmix64(splitmix64(seed ^ splitmix64(offset)) + torch.arange(B, device=logits.device))
    r = splitmix64(row_key[:, None] + torch.arange(V, device=logits.device))
    u = (_srl(r, 40).float() + 0.5) * (1.0 / 16777216.0)
    z = (logits - logits.amax(dim=-1, keepdim=True)) * (1.0 / params.temperature)
    score = torch.where(keep, z - torch.log(-torch.log(u)), float("-inf"))
    rng[1] += 1
    return score.argmax(dim=-1)


def sample(logits: torch.Tensor, params, rng: torch.Tensor, seen: torch.Tensor | None = None,
           fused=sample_fused) -> torch.Tensor:
    """The fixed-shape decode path's sampler: repetition penalty in torch, then the fused draw (this twin,
    or the cupy kernel)."""
    if seen is not None and params.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    return fused(logits, params, rng)


def int8_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K] @ (q [N, K] int8 * scale [N]).T. Twin of int8_gemm in kernels/gemv.cu."""
    y = x.float() @ (q.float() * scale.float()[:, None]).t()
    return (y if bias is None else y + bias.float()).to(x.dtype)


def int4_linear(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                bias: torch.Tensor | None, group_size: int) -> torch.Tensor:
    """x [M, K] @ W.T with W = (q - 8) * scale + zero per group; packed [N, K/2] (low nibble = even k).

    Twin of int4_gemm in kernels/gemv.cu.
    """
    N, K = packed.shape[0], packed.shape[1] * 2
    q = torch.stack([packed & 15, packed >> 4], dim=-1).view(N, K // group_size, group_size).float()
    w = ((q - 8.0) * scale.float()[..., None] + zero.float()[..., None]).view(N, K)
    y = x.float() @ w.t()
    return (y if bias is None else y + bias.float()).to(x.dtype)
