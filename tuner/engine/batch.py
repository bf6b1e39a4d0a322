"""Sequences in flight: the per-sequence state that the decode loop (and a scheduler) owns between steps."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Sequence:
    """One request: its prompt, when it stops, and the tokens it has produced with their times (ms since the
    run began)."""

    prompt: list[int]
    max_new_tokens: int
    stops: frozenset[int] = frozenset()
    tokens: list[int] = field(default_factory=list)
    times_ms: list[float] = field(default_factory=list)
    done: bool = False

    def add(self, token: int, time_ms: float) -> None:
        self.tokens.append(token)
        self.times_ms.append(time_ms)
        self.done = token in self.stops or len(self.tokens) >= self.max_new_tokens


class Batch:
    """Sequences that step together, and their state on the device: the tokens each has in the KV cache
    (`lens`, and `lens_t` on the device), its newest sampled token (`last`, not in the cache yet) and the
    tokens it has seen (`seen`, for the repetition penalty; None without one)."""

    def __init__(self, seqs: list[Sequence], device: torch.device, vocab_size: int, penalty: bool):
        self.seqs = seqs
        self.lens = [len(s.prompt) for s in seqs]
        self.lens_t = torch.tensor(self.lens, device=device)
        self.last: torch.Tensor | None = None
        self.seen = None
        if penalty:
            self.seen = torch.zeros(len(seqs), vocab_size, dtype=torch.bool, device=device)
            for b, s in enumerate(seqs):
                self.seen[b, s.prompt] = True

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def done(self) -> bool:
        return all(s.done for s in self.seqs)

    def wants_step(self, ahead: bool) -> bool:
        """Whether a sequence still needs a token beyond the one a step queued `ahead` will bring."""
        return any(not s.done and len(s.tokens) + ahead < s.max_new_tokens for s in self.seqs)

    def sampled(self, tokens: torch.Tensor) -> None:
        """The step's new tokens [B] (on the device): the next step's inputs, and seen by its penalty."""
        self.last = tokens
        if self.seen is not None:  # on the device, in order: no wait for the host
            self.seen[torch.arange(len(self.seqs), device=tokens.device), tokens] = True

    def advance(self) -> None:
        """Each sequence's newest token is in the cache now."""
        self.lens = [n + 1 for n in self.lens]
        self.lens_t += 1

    def add(self, tokens: list[int], time_ms: float) -> None:
        """Tokens a step gave, one per sequence; those of sequences already done are dropped."""
        for seq, token in zip(self.seqs, tokens, strict=True):
            if not seq.done:
                seq.add(token, time_ms)


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
