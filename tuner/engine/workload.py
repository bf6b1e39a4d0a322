"""Synthetic workloads: seeded random prompts of exact lengths with a forced output length."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..knobs import WORKLOAD_KNOBS

# Workload's fields and the workload knobs they are (knobs.py): the knobs' names are those of the shared
# key=value namespace, where batch would read as batch_size and seed as the engine's seed.
FIELDS = {"batch": "num_prompts", "prompt_len": "prompt_len", "output_len": "output_len", "seed": "workload_seed"}


@dataclass(frozen=True)
class Workload:
    """`batch` prompts of `prompt_len` random token ids, each generating exactly `output_len` tokens.

    batch=None means one static batch of the engine's batch_size.
    """

    batch: int | None = None
    prompt_len: int = WORKLOAD_KNOBS["prompt_len"].default
    output_len: int = WORKLOAD_KNOBS["output_len"].default
    seed: int = WORKLOAD_KNOBS["workload_seed"].default

    def __post_init__(self):
        for name, knob in FIELDS.items():
            value = getattr(self, name)
            if value is None and name == "batch":
                continue
            try:
                WORKLOAD_KNOBS[knob].check(value)
                if name == "batch" and value == 0:
                    raise ValueError
            except ValueError:
                low = 1 if name != "seed" else 0
                raise ValueError(f"Workload {name}={value!r} is not allowed: {name} must be an int >= {low}"
                                 + (" (or None: the engine's batch_size)" if name == "batch" else "")) from None

    @classmethod
    def from_knobs(cls, knobs: dict) -> Workload:
        """The workload of workload knobs (num_prompts, prompt_len, output_len, workload_seed; registry defaults
        for those not given; num_prompts 0: the engine's batch_size)."""
        values = {f: knobs.get(k, WORKLOAD_KNOBS[k].default) for f, k in FIELDS.items()}
        return cls(**{**values, "batch": values["batch"] or None})

    def prompts(self, vocab_size: int, batch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed)
        ids = torch.randint(0, vocab_size, (batch, self.prompt_len), generator=g)
        return ids.tolist()

    def to_dict(self) -> dict:
        return asdict(self)
