"""Synthetic workloads: seeded random prompts of exact lengths with a forced output length."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Workload:
    """`batch` prompts of `prompt_len` random token ids, each generating exactly `output_len` tokens.

    batch=None means one static batch of the engine's batch_size.
    """

    batch: int | None = None
    prompt_len: int = 128
    output_len: int = 128
    seed: int = 0

    def __post_init__(self):
        for name in ("batch", "prompt_len", "output_len", "seed"):
            value = getattr(self, name)
            if value is None and name == "batch":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < (0 if name == "seed" else 1):
                raise ValueError(f"Workload {name}={value!r} is not allowed: {name} must be an int >= "
                                 f"{0 if name == 'seed' else 1}")

    def prompts(self, vocab_size: int, batch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed)
        ids = torch.randint(0, vocab_size, (batch, self.prompt_len), generator=g)
        return ids.tolist()

    def to_dict(self) -> dict:
        return asdict(self)
