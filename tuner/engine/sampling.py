"""Sampling: repetition penalty, temperature, top-k, top-p, min-p, then a seeded draw (or greedy argmax)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..backends.torch_ops import apply_repetition_penalty
from ..config import SamplingParams


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


@dataclass
class Sampler:
    """One run's sampling: its parameters, the seeded torch generator, and the fused sampler's random state on
    the device ([seed, offset, blocks done]), for the cupy backend."""

    params: SamplingParams
    generator: torch.Generator
    rng: torch.Tensor

    @classmethod
    def seeded(cls, params, device: torch.device) -> Sampler:
        return cls(params, torch.Generator(device=device).manual_seed(params.seed),
                   torch.tensor([params.seed, 0, 0], dtype=torch.long, device=device))
