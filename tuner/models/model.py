"""The decoder: Llama / Mistral / Qwen2 / Qwen3 as one plain forward pass over fused weights.

A layer is RMSNorm -> fused q/k/v projection -> (Qwen3: per-head q/k RMSNorm) -> RoPE -> KV-cache
write -> grouped-query attention -> o projection -> residual -> RMSNorm -> fused gate/up -> SiLU*up
-> down projection -> residual. The ops come from a backend module (tuner.backends.torch_ops or cupy_ops),
which the engine passes to each call. `forward` serves prefill and the torch backend's decode; `decode` is
the fixed-shape decode step of the cupy backend (fused kernels, CUDA-graph capturable), which runs on CPU too
through the kernels' torch twins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ranges import op, ranges_on
from .args import ModelArgs
from .quant import Embedding, Linear, nbytes


@dataclass
class Layer:
    attn_norm: torch.Tensor
    wqkv: Linear
    qk_norm: torch.Tensor | None  # [H + Hkv, head_dim]: q_norm rows then k_norm rows (Qwen3)
    wo: Linear
    mlp_norm: torch.Tensor
    w13: Linear
    w2: Linear


@dataclass
class Step:
    """Where the tokens of one forward pass sit: the per-sequence state a scheduler would own."""

    positions: torch.Tensor  # [B, T] position of each token
    cos: torch.Tensor  # [B, T, 1, D]
    sin: torch.Tensor  # [B, T, 1, D], sign-folded (see torch_ops.rope)
    mask: torch.Tensor | None  # [B or 1, 1, G*T, key_len] bool, True attends; None: attend to all
    context_len: int | None  # longest sequence after this step; None: attend to this step's own keys only
    write: tuple | None = None  # (flat token index or None for all, cache slots) of tokens to store
    rows: torch.Tensor | None = None  # [B] the cache row of each sequence; None: rows 0..B-1
    # packed: (B, T, index) when the pass's tokens are packed, [N] with no padding, and `index` [N] places each in
    # the B x T grid of sequences and positions that attention uses (positions, cos, sin are then [N, ...])
    packed: tuple | None = None


@dataclass
class DecodeState:
    """Inputs of one fixed-shape decode step (one new token per sequence). Shapes do not depend on the
    context length, so the step can be captured in a CUDA graph and replayed with new values."""

    tokens: torch.Tensor  # [B] the newest token of each sequence
    positions: torch.Tensor  # [B] int32 its position (= tokens already cached)
    seq_lens: torch.Tensor  # [B] int32 positions + 1: keys to attend to
    tables: torch.Tensor  # [B, n] int32 cache blocks of each sequence (contiguous cache: [[b]])
    block_size: int  # tokens per block (contiguous cache: its row length)
    cos: torch.Tensor  # [max_seq_len, D] rope tables
    sin: torch.Tensor
    plan: object = None  # the backend's attention plan for this batch shape


def _grid(x: torch.Tensor, packed: tuple) -> torch.Tensor:
    """Packed tokens x [N, heads, D] -> [B, T, heads, D], zeros where a sequence is shorter than T."""
    B, T, index = packed
    out = x.new_zeros(B * T, *x.shape[1:])
    out[index] = x
    return out.view(B, T, *x.shape[1:])


def rope_tables(args: ModelArgs, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sign-folded sin tables [length, head_dim], computed in fp32 as HF does."""
    D = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    scaling = args.rope_scaling or {}
    if scaling.get("rope_type") == "linear":
        inv_freq = inv_freq / scaling["factor"]
    elif scaling.get("rope_type") == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, scaling)
    freqs = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos(), emb.sin()
    sin[:, : D // 2] *= -1
    return cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype)


def _llama3_inv_freq(inv_freq: torch.Tensor, s: dict) -> torch.Tensor:
    # Llama 3.1: keep high frequencies, divide low ones by `factor`, interpolate smoothly between.
    factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / lo, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_len / hi) & (wavelen <= old_len / lo)
    return torch.where(medium, smoothed, scaled)


class Transformer:
    def __init__(self, args: ModelArgs, embed: Embedding, layers: list[Layer], norm: torch.Tensor, lm_head: Linear):
        self.args, self.embed, self.layers, self.norm, self.lm_head = args, embed, layers, norm, lm_head

    def forward(self, tokens: torch.Tensor, step: Step, cache, ops, last: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, T] -> float32 logits [B, T, V], or [B, V] at index `last` [B] of each row. `cache` (None:
        attend within this step only) takes the step's K/V where step.write says.

        With step.packed the tokens are [N], several sequences' chunks one after another with no padding (the
        linear layers see only real tokens); attention unpacks them into the B x T grid. `last` then indexes
        the N tokens: logits [len(last), V]."""
        a = self.args
        packed = step.packed
        B, T = packed[:2] if packed is not None else tokens.shape
        lead = tokens.shape  # (N,) packed, else (B, T)
        H, Hkv, D = a.n_heads, a.n_kv_heads, a.head_dim
        with op("embedding"):
            x = self.embed(tokens)
        for i, layer in enumerate(self.layers):
            with op("attn_norm"):
                h = ops.rms_norm(x, layer.attn_norm, a.norm_eps)
            with op("qkv_proj"):
                qkv = layer.wqkv(h)
            qk = qkv[..., : (H + Hkv) * D].view(*lead, H + Hkv, D)
            v = qkv[..., (H + Hkv) * D :].view(*lead, Hkv, D)
            if layer.qk_norm is not None:
                with op("qk_norm"):
                    qk = ops.head_rms_norm(qk, layer.qk_norm, a.norm_eps)
            with op("rope"):
                qk = ops.rope(qk, step.cos, step.sin)
            q, k = qk[..., :H, :], qk[..., H:, :]
            if step.write is not None:
                with op("kv_write"):
                    index, slots = step.write
                    k_new, v_new = k.reshape(-1, Hkv, D), v.reshape(-1, Hkv, D)
                    if index is not None:
                        k_new, v_new = k_new[index], v_new[index]
                    cache.write(i, k_new, v_new, slots)
            with op("attention"):
                if packed is not None:  # into the B x T grid of sequences and positions
                    q = _grid(q, packed)
                if step.context_len is None:
                    k, v = (_grid(k, packed), _grid(v, packed)) if packed is not None else (k, v)
                    k_all, v_all = k.transpose(1, 2), v.transpose(1, 2)
                else:
                    k_all, v_all = cache.read(i, B if step.rows is None else step.rows, step.context_len)
                att = ops.attention(q, k_all, v_all, step.mask)
                if packed is not None:
                    att = att.reshape(B * T, -1)[packed[2]]
            with op("o_proj"):
                o = layer.wo(att)
            with op("residual"):
                x = x + o
            with op("mlp_norm"):
                h = ops.rms_norm(x, layer.mlp_norm, a.norm_eps)
            with op("gate_up_proj"):
                gu = layer.w13(h)
            with op("act_mul"):
                m = ops.silu_and_mul(gu)
            with op("down_proj"):
                d = layer.w2(m)
            with op("residual"):
                x = x + d
        with op("final_norm"):
            if last is not None:
                x = x[last] if packed is not None else x[torch.arange(B, device=x.device), last]
            h = ops.rms_norm(x, self.norm, a.norm_eps)
        with op("lm_head"):
            return self.lm_head(h).float()

    def decode(self, st: DecodeState, cache, ops) -> torch.Tensor:
        """One decode step through the fused ops of a backend (cupy kernels, or their torch twins):
        float32 logits [B, V]. Residual adds are fused into the next RMSNorm, q/k norm and RoPE into the
        KV-cache write."""
        a = self.args
        H, Hkv, eps = a.n_heads, a.n_kv_heads, a.norm_eps
        with op("embedding"):
            x = self.embed(st.tokens)  # [B, dim], a fresh tensor the fused adds update in place
        # the cpu backend runs all layers in one C call, except while ops are being timed one by one (a profile)
        h = None if ranges_on() or not hasattr(ops, "decode_layers") else \
            ops.decode_layers(self.layers, self.norm, eps, st, cache, x, H, Hkv)
        if h is None:
            h = self._decode_layers(x, st, cache, ops)
        with op("lm_head"):
            return ops.linear(self.lm_head, h).float()

    def _decode_layers(self, x: torch.Tensor, st: DecodeState, cache, ops) -> torch.Tensor:
        """The decode step's layers, one op at a time: x [B, dim] in, final_norm(last residual) out."""
        a = self.args
        H, Hkv, eps = a.n_heads, a.n_kv_heads, a.norm_eps
        with op("add_norm"):
            x, h = ops.add_rms_norm(x, None, self.layers[0].attn_norm, eps)
        for i, layer in enumerate(self.layers):
            with op("qkv_proj"):
                qkv = ops.linear(layer.wqkv, h)
            with op("rope_kv_write"):
                q = ops.rope_kv_write(qkv, layer.qk_norm, eps, st.positions, st.cos, st.sin, cache, i, st.tables,
                                      st.block_size, H, Hkv)
            with op("attention"):
                o = ops.decode_attention(q, cache, i, st.tables, st.block_size, st.seq_lens, st.plan)
            with op("o_proj"):
                o = ops.linear(layer.wo, o)
            with op("add_norm"):
                x, h = ops.add_rms_norm(x, o, layer.mlp_norm, eps)
            with op("gate_up_proj"):
                gu = ops.linear(layer.w13, h)
            with op("act_mul"):
                m = ops.silu_and_mul(gu)
            with op("down_proj"):
                d = ops.linear(layer.w2, m)
            after = self.layers[i + 1].attn_norm if i + 1 < len(self.layers) else self.norm
            with op("add_norm"):
                x, h = ops.add_rms_norm(x, d, after, eps)
        return h

    def linears(self) -> list[Linear]:
        return [lin for layer in self.layers for lin in (layer.wqkv, layer.wo, layer.w13, layer.w2)]

    def weight_bytes(self) -> int:
        """Bytes of every stored weight, each tensor counted once (a tied table serves both ends)."""
        tensors = [self.norm, *self.embed.tensors(), *self.lm_head.tensors()]
        for layer in self.layers:
            tensors += [layer.attn_norm, layer.mlp_norm] + ([layer.qk_norm] if layer.qk_norm is not None else [])
        tensors += [t for lin in self.linears() for t in lin.tensors()]
        return nbytes({id(t): t for t in tensors}.values())

    def decode_weight_bytes(self) -> int:
        """Weight bytes one decode step reads: all but an untied embedding table (of which it reads B rows)."""
        head = {id(t) for t in self.lm_head.tensors()}
        unread = nbytes(t for t in self.embed.tensors() if id(t) not in head)
        return self.weight_bytes() - unread
