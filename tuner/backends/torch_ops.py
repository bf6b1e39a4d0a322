"""The torch reference backend: the ops a decoder layer is made of, in plain PyTorch.

It runs on CPU and GPU and is the truth every CuPy kernel is checked against.
"""

from __future__ import annotations

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
