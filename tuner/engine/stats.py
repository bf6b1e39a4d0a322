"""What a run measures as it goes: each token's time, each step's wall time, and the FLOPs and bytes of each
decode step (profile/cost.py), which give MBU and MFU; the running and waiting counts and KV blocks in use
after each step. `on_step` hears of every step and may stop the run."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from ..profile.load import LoadMeter
from ..profile.telemetry import Telemetry
from .batch import Pending
from .scheduler import Sequence


class RunStats:
    def __init__(self, n_batches: int, n_requests: int, max_new_tokens: int,
                 on_step: Callable[[dict], bool | None] | None = None, device: str = "cpu"):
        self.n_batches, self.n_requests, self.max_new_tokens = n_batches, n_requests, max_new_tokens
        self.on_step = on_step
        self.t0 = self.last = time.perf_counter()
        self.meter = LoadMeter()  # how busy the machine is while the run is timed
        self.telemetry = Telemetry(device).start()  # utilisation and memory, sampled off this thread
        self.seqs: list[Sequence] = []  # every request of the run
        self.wave = 0
        self.prefill_ms: list[float] = []  # steps that only prefilled
        self.decode_ms: list[float] = []  # steps that only decoded
        self.mixed_ms: list[float] = []  # steps that did both (chunked prefill beside decodes)
        self.decode_flops: list[float] = []
        self.decode_bytes: list[float] = []
        self.decode_rows: list[int] = []  # sequences each decode step computed a token for
        self.timeline: list[dict] = []  # after each step: time, running, waiting, KV blocks in use
        self.stopped = False
        self.interrupted = False  # Ctrl-C
        self.done_tokens = 0  # tokens given to sequences so far
        self.total_tokens = 0  # tokens the run's sequences may make in all
        self._wave_seqs: tuple[int, list[Sequence]] = (-1, [])  # the sequences of the newest wave, found once

    def begin(self, seqs: list[Sequence]) -> None:
        """The run's sequences, as the loop starts."""
        self.seqs = seqs
        self.total_tokens = sum(s.max_new_tokens for s in seqs)

    def now_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1e3

    def record(self, step: list[tuple[list[Sequence], Pending]], phase: str, queue: dict) -> list[Sequence]:
        """Wait for a step's tokens, give them to their sequences, and time the step (since the one before);
        the sequences that finished."""
        finished, per_step = [], []
        for seqs, pending in step:
            if pending is None:  # prefill chunks that end inside their prompts sample nothing
                continue
            tokens = pending.wait()
            per_step.append((seqs, pending))
            now = time.perf_counter()
            for seq, token in zip(seqs, tokens, strict=True):
                seq.inflight -= 1
                if not seq.done:
                    seq.add(token, (now - self.t0) * 1e3)
                    self.done_tokens += 1
                    if seq.done:
                        finished.append(seq)
        now = time.perf_counter()
        step_ms, self.last = (now - self.last) * 1e3, now
        if phase == "prefill":
            self.prefill_ms.append(step_ms)
        elif phase == "mixed":
            self.mixed_ms.append(step_ms)
        else:
            seqs, pending = per_step[-1]
            self.decode_ms.append(step_ms)
            self.decode_flops.append(pending.flops)
            self.decode_bytes.append(pending.nbytes)
            self.decode_rows.append(len(seqs))
        self.timeline.append({"t_ms": round((now - self.t0) * 1e3, 3), "step_ms": round(step_ms, 3), "phase": phase,
                              **queue})
        if self.on_step is not None:
            event = self._event(phase, step_ms, now)
            # where the queue stands, and the requests this step finished: (arrival, TTFT) each, in ms
            event.update(queue, finished=[(s.arrival_ms, s.times_ms[0] - s.arrival_ms) for s in finished])
            if self.on_step(event):
                self.stopped = True
        return finished

    def _event(self, phase: str, step_ms: float, now: float) -> dict:
        if self._wave_seqs[0] != self.wave:  # a new wave: its sequences, looked up once rather than every step
            self._wave_seqs = (self.wave, [s for s in self.seqs if s.wave == self.wave])
        wave = self._wave_seqs[1]
        return {"phase": phase, "batch_index": self.wave, "n_batches": self.n_batches, "step_ms": step_ms,
                "elapsed_s": now - self.t0, "tokens": sum(len(s.tokens) for s in wave),
                "batch_tokens_max": len(wave) * self.max_new_tokens, "n_requests": self.n_requests,
                # the whole run's progress, what a progress bar shows
                "done_tokens": self.done_tokens, "total_tokens": self.total_tokens,
                "telemetry": self.telemetry.latest}  # the newest utilisation sample (None before the first)


    def decode_metrics(self, hardware: dict) -> dict:
        """Decode bandwidth, MBU and MFU against the measured ceilings, the bytes a decode step moves per token it
        computes (analytic, so the same on any machine), and the prefill time."""
        decode_s = sum(self.decode_ms) / 1e3
        out = {"decode_gbs": None, "mbu": None, "mfu": None, "decode_bytes_per_token": None}
        if self.decode_rows:
            out["decode_bytes_per_token"] = sum(self.decode_bytes) / sum(self.decode_rows)
        if decode_s:
            out["decode_gbs"] = sum(self.decode_bytes) / decode_s / 1e9
            out["mbu"] = out["decode_gbs"] / hardware["bandwidth_gbs"]
            out["mfu"] = sum(self.decode_flops) / decode_s / 1e12 / hardware["matmul_tflops"]
        out["prefill_ms"] = sum(self.prefill_ms)
        out["decode_step_spread"] = spread(self.decode_ms)
        return out


def spread(values: list[float]) -> float | None:
    """The noise of repeated measurements: (p90 - p10) / p50, a fraction; None under 5 values."""
    if len(values) < 5:
        return None
    p10, p50, p90 = np.percentile(values, (10, 50, 90))
    return float((p90 - p10) / p50) if p50 else None
