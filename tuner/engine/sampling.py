"""Sampling: repetition penalty, temperature, top-k, top-p, min-p, then a seeded draw (or greedy argmax)."""

from __future__ import annotations

import torch


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF/vLLM rule on tokens already in the sequence: positive logits / penalty, negative ones * penalty."""
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def filtered_probs(logits: torch.Tensor, params) -> torch.Tensor:
    """Next-token probabilities [B, V] after temperature, top-k, top-p and min-p (renormalized)."""
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    if params.top_p < 1.0:
        # keep the most likely tokens until their mass reaches top_p (the first token always stays)
        p_sorted, order = probs.sort(dim=-1, descending=True)
        drop_sorted = (p_sorted.cumsum(dim=-1) - p_sorted) >= params.top_p
        probs = probs.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), 0.0)
    if params.min_p > 0.0:
        probs = probs.masked_fill(probs < params.min_p * probs.amax(dim=-1, keepdim=True), 0.0)
    return probs / probs.sum(dim=-1, keepdim=True)


def sample(logits: torch.Tensor, params, generator: torch.Generator, seen: torch.Tensor | None = None) -> torch.Tensor:
    """Token ids [B] from float32 logits [B, V]; `seen` [B, V] marks tokens for the repetition penalty."""
    if seen is not None and params.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.temperature == 0.0:
        return logits.argmax(dim=-1)
    probs = filtered_probs(logits, params)
    # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p, with no host sync.
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / noise).argmax(dim=-1)
