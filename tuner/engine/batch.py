"""The running rows' state on the device, and a step's sampled tokens on their way to the host."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class Rows:
    """Per cache row: its newest sampled token (`last`, the next decode step's input, not in the cache yet) and
    the tokens its sequence has seen (`seen`, for the repetition penalty; None without one)."""

    def __init__(self, n_rows: int, device: torch.device, vocab_size: int, penalty: bool):
        self.last = torch.zeros(n_rows, dtype=torch.long, device=device)
        self.seen = torch.zeros(n_rows, vocab_size, dtype=torch.bool, device=device) if penalty else None

    def start(self, row: int, tokens: list[int]) -> None:
        """A sequence takes row `row`; it has seen `tokens` (its prompt, and what it generated before a
        preemption)."""
        if self.seen is not None:
            self.seen[row] = False
            self.seen[row, tokens] = True

    def sampled(self, rows: torch.Tensor, tokens: torch.Tensor) -> None:
        """New tokens [B] of `rows` (on the device): the next step's inputs, and seen by its penalty."""
        self.last[rows] = tokens
        if self.seen is not None:  # on the device, in order: no wait for the host
            self.seen[rows, tokens] = True


@dataclass
class Pending:
    """A step's sampled tokens on their way to the host, with the FLOPs and bytes the step moved."""

    tokens: torch.Tensor  # on the host (pinned, behind `event`) or, off CUDA, where they were sampled
    event: object = None
    flops: float = 0.0
    nbytes: float = 0.0

    @classmethod
    def queue(cls, tokens: torch.Tensor, flops: float = 0.0, nbytes: float = 0.0) -> Pending:
        """Start copying `tokens` to the host; on CUDA the copy runs behind the device's queued work."""
        if tokens.device.type != "cuda":
            return cls(tokens, None, flops, nbytes)
        host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
        host.copy_(tokens, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return cls(host, event, flops, nbytes)

    def wait(self) -> list[int]:
        if self.event is not None:
            self.event.synchronize()
        return self.tokens.tolist()
