"""The Engine: a model and its KV cache built on this machine, its two step functions (`prefill`, `decode`)
and the decode loop over them (`_loop`), which the scheduler (engine/scheduler.py) drives. `generate()` runs
requests that all arrive at once through that loop; tuner.serve runs timed arrivals through the same loop.
"""

from __future__ import annotations

import collections.abc
import contextlib
import numbers
import resource
import threading
import time
from collections.abc import Callable

import torch

from .. import __version__
from ..backends import torch_ops
from ..config import EngineConfig, SamplingParams
from ..knobs import ENGINE_KNOBS, short_repr
from ..models.loader import build_model, eos_token_ids, load_tokenizer
from ..models.model import DecodeState, Step, rope_tables
from ..profile import cost
from ..profile.capture import Capture, new_run_id, profile_extras
from ..profile.hardware import hardware_info
from ..profile.prices import cost_metrics, device_price
from ..ranges import op
from ..result import RunResult, compute_metrics
from .batch import Pending, Rows
from .graphs import CudaGraphs, bucket
from .kv_cache import KVCache, PagedKVCache
from .machine import check_machine, check_prefill, resolve_backend
from .sampling import Sampler, sample
from .scheduler import Scheduler, Sequence, StepPlan
from .stats import RunStats
from .workload import Workload

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Engine:
    """A loaded model plus its KV cache, ready to generate."""

    def __init__(self, config: EngineConfig | None = None, *, progress: Callable[[int, int], None] | None = None,
                 _weights_from: Engine | None = None, **knobs):
        config = EngineConfig(**knobs) if config is None else config.replace(**knobs) if knobs else config
        self.args, checkpoint = check_machine(config)  # what only this machine can tell, before any weights load
        self.asked = config  # as given; `config` holds backend='auto' resolved for this machine
        self.config = config = resolve_backend(config, self.args)
        self.device, self.dtype = torch.device(config.device), _DTYPES[config.dtype]
        # The torch backend decodes through model.forward, or with cuda_graphs through the fixed-shape
        # model.decode step on torch_ops; the cupy and cpu backends always through model.decode and their kernels
        # (tests run that step on CPU with torch_ops, the kernels' twins). Prefill is model.forward on torch_ops.
        self.ops, self.fixed_decode = torch_ops, config.cuda_graphs
        if config.backend == "cupy":
            from ..backends import cupy_ops

            self.ops, self.fixed_decode = cupy_ops, True
        if config.backend == "cpu":  # tuner's C kernels for the decode step (float32)
            from ..backends import cpu_ops

            self.ops, self.fixed_decode = cpu_ops, True
        if _weights_from is not None:  # same weights, other runtime knobs (see replace())
            self.model, self.load_s = _weights_from.model, 0.0
            self.tokenizer, self.eos_ids = _weights_from.tokenizer, _weights_from.eos_ids
        else:
            t = time.perf_counter()
            weights = None if config.weights == "dummy" else checkpoint
            self.model = build_model(self.args, weights, self.dtype, self.device, config.quant, config.group_size,
                                     config.seed, progress, native=config.backend == "cpu")
            self.load_s = time.perf_counter() - t
            self.tokenizer = load_tokenizer(checkpoint)
            self.eos_ids = eos_token_ids(self.args, checkpoint)
        self.decode_weight_bytes = self.model.decode_weight_bytes()
        # CUDA graphs pad a batch to its bucket and need a scratch slot for the padding rows to write to
        graphs = config.cuda_graphs
        if config.kv_cache == "paged":
            self.cache = PagedKVCache(self.args, config.batch_size, config.max_seq_len, self.dtype, config.kv_dtype,
                                      self.device, config.block_size, config.num_blocks, scratch=graphs)
        else:
            rows = bucket(config.batch_size) + 1 if graphs else None
            self.cache = KVCache(self.args, config.batch_size, config.max_seq_len, self.dtype, config.kv_dtype,
                                 self.device, rows=rows)
        self.cos, self.sin = rope_tables(self.args, config.max_seq_len, self.device, self.dtype)
        self._hardware: dict | None = None
        self._plans: dict = {}
        self._cap: Capture | None = None
        self._ahead = self.device.type == "cuda"  # queue step k+1 before reading step k (the device runs async)
        self._busy = threading.Lock()  # one generate() at a time: runs share the KV cache
        self._decode_rows = None  # the last decode step's rows and lengths, host and device (Engine.decode)
        self.graphs = CudaGraphs(self) if graphs else None

    @classmethod
    def from_file(cls, path, progress: Callable[[int, int], None] | None = None) -> Engine:
        """The engine of a tuner.config/1 file (`tuner.export(..., "tuner")`); `tuner.load_config(path)` also
        returns its SamplingParams."""
        from ..config import load_config

        config, _ = load_config(path)
        return cls(config, progress=progress)

    def replace(self, progress: Callable[[int, int], None] | None = None, **knobs) -> Engine:
        """An engine with these knobs changed. It shares this engine's loaded weights unless a knob that
        shapes them changes (model, weights, device, dtype, quant, group_size, seed: see Knob.reload)."""
        config = self.asked.replace(**knobs)  # backend='auto' is resolved again for the new knobs
        if any(getattr(config, k.name) != getattr(self.config, k.name) for k in ENGINE_KNOBS.values() if k.reload):
            return Engine(config, progress=progress)
        return Engine(config, _weights_from=self)

    # -- generation: static batches through the decode loop -----------------------------------------

    @torch.inference_mode()
    def generate(self, prompts, sampling: SamplingParams | None = None, profile: bool | str = False,
                 on_step: Callable[[dict], bool | None] | None = None, logdir: str | None = None) -> RunResult:
        """Generate for `prompts` (token-id lists, strings, or a Workload) in static batches of batch_size.

        on_step(event) is called after each prefill and decode step with progress figures (done_tokens of
        total_tokens for the whole run); returning True stops the run, keeping what finished. profile=True runs
        under torch.profiler: the result's `ops` table explains each op per phase (time, FLOPs, bytes, achieved
        rates, bound) and its traces land in <logdir>/<run_id>/ (default tuner.profile.capture.default_logdir()),
        one profiler step per engine step. profile="shapes,memory,stack" (any of them) also records input shapes,
        memory and Python stacks (tuner.profile.capture.EXTRAS).
        """
        with self._busy:  # a second caller (the panel's thread beside a cell) waits for the first to finish
            return self._generate(prompts, sampling, profile, on_step, logdir)

    def _generate(self, prompts, sampling, profile, on_step, logdir) -> RunResult:
        requests, sampling, workload = self._requests(prompts, sampling)
        hw = self.hardware()
        rss_reset = _reset_peak_rss()
        run_id = new_run_id()
        self._cap = Capture(self.device, logdir, run_id, profile_extras(profile)) if profile else None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        stops = frozenset(sampling.stop_token_ids) | (frozenset() if sampling.ignore_eos else frozenset(self.eos_ids))
        seqs = [Sequence(p, sampling.max_new_tokens, stops, id=i) for i, p in enumerate(requests)]
        stats = RunStats(-(-len(requests) // self.config.batch_size), len(requests), sampling.max_new_tokens, on_step,
                         self.config.device)
        try:
            with self._cap or contextlib.nullcontext():
                self._loop(seqs, sampling, stats)
        finally:
            stats.telemetry.stop()
        ops_records, profile_info = [], {}
        if self._cap is not None:
            ops_records, profile_info = self._cap.finish(self.config.to_dict(), hw, sampling.temperature == 0.0,
                                                         self.args)
            self._cap = None
        return self._record(stats, requests, sampling, workload, hw, ops_records, profile_info, run_id, rss_reset)

    @torch.inference_mode()
    def serve(self, seqs: list[Sequence], sampling: SamplingParams | None = None,
              on_step: Callable[[dict], bool | None] | None = None,
              max_concurrency: int = 0) -> tuple[RunStats, Scheduler]:
        """Run timed requests (Sequence.arrival_ms since the call) through the decode loop in real time, as a
        server sees them; their tokens and times land in the sequences. Ctrl-C (or on_step returning True)
        stops the run and keeps what finished; `stats.interrupted` says Ctrl-C came. tuner.serve builds the
        requests from traffic and turns the sequences into a tuner.serve/1 record."""
        sampling = sampling if sampling is not None else SamplingParams()
        for seq in seqs:
            self._check_ids(seq.prompt)
            self._check_length(len(seq.prompt), seq.max_new_tokens)
        with self._busy:
            stats = RunStats(0, len(seqs), sampling.max_new_tokens, on_step, self.config.device)
            try:
                sched = self._loop(seqs, sampling, stats, realtime=True, max_concurrency=max_concurrency)
            except KeyboardInterrupt:
                stats.stopped = stats.interrupted = True
                sched = None
            finally:
                stats.telemetry.stop()
            return stats, sched

    def scheduler(self) -> Scheduler:
        """A scheduler over this engine's KV cache, with its serving knobs (engine/scheduler.py)."""
        c = self.config
        return Scheduler(self.cache, c.batch_size, c.max_num_batched_tokens, c.enable_chunked_prefill,
                         c.enable_prefix_caching, static=c.scheduling == "static")

    def _loop(self, seqs: list[Sequence], sampling: SamplingParams, stats: RunStats,
              realtime: bool = False, max_concurrency: int = 0) -> Scheduler:
        """The decode loop: each step the scheduler picks prefill chunks and decode rows, the step functions run
        them, and their tokens go back to their sequences; until every sequence has finished.

        Requests join at their arrival times (arrival_ms since the run began: `realtime`, as a server sees them;
        otherwise all are there at once). On a GPU the host queues step k+1 before it waits for step k's tokens (it
        needs them only to stop a sequence), so the device does not idle while Python prepares a step; a sequence
        that stops on a stop token has had one step queued past it, whose token is dropped. On a CPU an op runs as
        it is called, so queueing ahead gains nothing, and each step is read before the next runs: otherwise a
        step's tokens would be timed after the next step's work (the first token late by a decode step, the last
        gap near zero).
        """
        sched = self.scheduler()
        sched.max_concurrency = max_concurrency
        sched.add(seqs)
        stats.begin(seqs)
        self.cache.reset()
        self._decode_rows = None
        rows = Rows(self.config.batch_size, self.device, self.args.vocab_size, sampling.repetition_penalty != 1.0)
        sampler = Sampler.seeded(sampling, self.device)
        pending = None  # the step queued ahead: (its sub-steps, phase, queue figures), read after the next is queued
        while True:
            now = stats.now_ms()
            sched.arrive(now if realtime else float("inf"))
            t = time.perf_counter()
            plan = sched.schedule(now) if not stats.stopped else None
            sched_ms = (time.perf_counter() - t) * 1e3  # the scheduler's host time for this step
            queued = None
            if plan:
                queued = (self._step(plan, rows, sampler), plan.phase, {**sched.figures(), "sched_ms": sched_ms})
            read, pending = (pending, queued) if self._ahead else (queued, None)
            self._read(read, sched, stats)
            if pending is None:
                if stats.stopped or sched.idle:
                    return sched
                if read is None and sched.waiting and not sched.running:  # nothing ran, and nothing can start
                    raise RuntimeError(f"request {sched.waiting[0].id} cannot be scheduled on an empty engine "
                                       "(its first chunk needs more KV blocks or tokens than there are)")
                wait = sched.next_arrival_ms()
                if wait is not None and not sched.waiting and not sched.running:  # idle until the next request
                    time.sleep(max(0.0, wait - stats.now_ms()) / 1e3)
                    stats.last = time.perf_counter()  # the next step's time starts now, not at the last step

    def _read(self, pending, sched: Scheduler, stats: RunStats) -> None:
        if pending is None:
            return
        step, phase, figures = pending
        stats.wave = max((seq.wave for subs, _ in step for seq in subs), default=stats.wave)  # the newest wave
        for seq in stats.record(step, phase, figures):
            sched.retire(seq, stats.now_ms())
        for subs, _ in step:
            for seq in subs:
                sched.index(seq)

    def _step(self, plan: StepPlan, rows: Rows, sampler: Sampler) -> list[tuple[list[Sequence], Pending]]:
        """Run one step's work. Prefill chunks and decode rows share one forward pass (their tokens packed, so the
        weights are read once); on the fixed-shape decode path (cupy kernels, CUDA graphs) decode rows run there
        and the chunks in a pass of their own."""
        for seq in plan.admitted:
            rows.start(seq.row, seq.known)
        if plan.prefill and plan.decode and not self.fixed_decode:
            return [self.prefill(plan.prefill, rows, sampler, decode=plan.decode)]
        out = []
        if plan.prefill:
            out.append(self.prefill(plan.prefill, rows, sampler))
        if plan.decode:
            out.append(self.decode(plan.decode, rows, sampler))
        return out

    # -- the step functions ----------------------------------------------------------------------------

    def prefill(self, chunks: list[tuple[Sequence, int, int]], rows: Rows, sampler: Sampler,
                decode: list[Sequence] = ()) -> tuple[list[Sequence], Pending]:
        """Prefill chunks (sequence, start, end) of prompt (+ recomputed) tokens, and one token of each `decode`
        sequence, in one forward pass over their tokens packed end to end. The sequences whose chunk reaches their
        last known token, and the decode sequences, get their next token, sampled and queued."""
        work = list(chunks) + [(seq, seq.cached, seq.cached + 1) for seq in decode]
        starts = [a for _, a, _ in work]
        lens = [e - a for _, a, e in work]
        ids = [t for seq, a, e in chunks for t in seq.known[a:e]]
        row_t = torch.tensor([s.row for s, _, _ in work], device=self.device)
        tokens = torch.tensor(ids, dtype=torch.long).to(self.device)
        if decode:  # their newest tokens are on the device, sampled by the step before
            tokens = torch.cat([tokens, rows.last[row_t[len(chunks):]]])
        done = [b for b, (seq, _, e) in enumerate(chunks) if e == len(seq.known)] + list(
            range(len(chunks), len(work)))
        ends = torch.tensor(lens, device=self.device).cumsum(0) - 1  # each sequence's last token, packed
        if self._cap is not None:
            self._cap.begin_step()
        with op("prefill"):
            step = self._prefill_step(lens, max(lens), write=True, rows=row_t, starts=starts, packed=True)
            logits = self.model.forward(tokens, step, self.cache, torch_ops, last=ends)
            sampled = [work[b][0] for b in done]
            pending = None
            if done:
                pick = torch.tensor(done, device=self.device)
                pending = Pending.queue(self._sample(rows, row_t[pick], logits[pick], sampler))
            if self._cap is not None:
                self._cap.sync()
        for seq, _, e in work:
            seq.cached = e
        for seq in sampled:
            seq.inflight += 1
        if self._cap is not None:
            self._cap.step("prefill", [(n, a) for n, a in zip(lens, starts, strict=True)], len(done))
        return sampled, pending

    def decode(self, seqs: list[Sequence], rows: Rows, sampler: Sampler) -> tuple[list[Sequence], Pending]:
        """One token per sequence: each newest token goes into the cache, and the next is sampled and queued."""
        lens = [s.cached for s in seqs]
        key = [s.row for s in seqs]
        last = self._decode_rows
        if last is not None and last[0] == key and last[1] == [n - 1 for n in lens]:  # the rows of the last step
            row_t, lens_t = last[2], last[3].add_(1)  # one more token each, counted on the device: no copy
        else:
            row_t, lens_t = torch.tensor(key, device=self.device), torch.tensor(lens, device=self.device)
        self._decode_rows = (key, lens, row_t, lens_t)
        if self._cap is not None:
            self._cap.begin_step()
        with op("decode"):
            logits = self._decode_logits(rows.last[row_t], lens_t, lens, row_t)
            tokens = self._sample(rows, row_t, logits, sampler)
        if self._cap is not None:
            self._cap.step("decode", [(1, n) for n in lens], len(seqs))
        for seq in seqs:
            seq.cached += 1
            seq.inflight += 1
        context = sum(lens) + len(lens)  # keys each sequence attended to, summed
        flops, nbytes = cost.decode_step(self.args, self.decode_weight_bytes, self.cache.bytes_per_token,
                                         len(seqs), context)
        return seqs, Pending.queue(tokens, flops, nbytes)

    def _sample(self, rows: Rows, row_t: torch.Tensor, logits: torch.Tensor, sampler: Sampler) -> torch.Tensor:
        with op("sampling"):
            seen = rows.seen[row_t] if rows.seen is not None else None
            if self.config.backend == "cupy":  # the cupy backend's fused sampler
                tokens = self.ops.sample(logits, sampler.params, sampler.rng, seen)
            else:
                tokens = sample(logits, sampler.params, sampler.generator, seen)
            rows.sampled(row_t, tokens)
        return tokens

    def _decode_logits(self, tokens: torch.Tensor, lens_t: torch.Tensor, lens: list[int],
                       rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, V] of one decode step: `tokens` [B] go into the cache at positions `lens` of cache rows
        `rows` (None: rows 0..B-1, reserved here; the scheduler reserves its rows' room itself) and attend to it."""
        if rows is None:
            self.cache.reserve([n + 1 for n in lens])
        if self.fixed_decode:
            return self._fixed_decode(tokens, lens_t, lens, rows)
        return self.model.forward(tokens[:, None], self._decode_step(lens_t, lens, rows), self.cache, torch_ops)[:, 0]

    def _fixed_decode(self, tokens: torch.Tensor, lens_t: torch.Tensor, lens: list[int],
                      rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, V] of the fixed-shape decode step (replayed from a CUDA graph when cuda_graphs=True)."""
        B = len(lens)
        tables = self.cache.decode_tables(B if rows is None else rows)
        if self.graphs is not None:
            return self.graphs.run(tokens, lens_t, tables, max(lens) + 1)
        positions = lens_t.to(torch.int32)
        st = DecodeState(tokens, positions, positions + 1, tables, self.cache.block_len, self.cos,
                         self.sin, self.plan(B, max(lens) + 1))
        return self.model.decode(st, self.cache, self.ops)

    def plan(self, B: int, max_len: int):
        """The attention plan for B sequences of up to max_len tokens (one per batch size and 256-token band)."""
        key = (B, -(-max_len // 256) * 256)
        if key not in self._plans:
            a = self.args
            self._plans[key] = self.ops.plan_attention(B, a.n_heads, a.n_kv_heads, a.head_dim,
                                                       min(key[1], self.config.max_seq_len), self.device)
        plan = self._plans[key]
        if plan is not None:  # the torch twins need none
            plan.check(max_len)
        return plan

    # -- one forward pass -------------------------------------------------------------------------

    def _prefill_step(self, lens: list[int], T: int, write: bool, rows: torch.Tensor | None = None,
                      starts: list[int] | None = None, packed: bool = False) -> Step:
        """Step for chunks of `lens` tokens right-padded to T (packed: end to end, no padding), chunk b at positions
        starts[b].. of cache row rows[b] (default: rows 0..B-1 from position 0). Chunks that start at 0 attend
        within themselves; later chunks also attend to their rows' cached tokens."""
        B, dev = len(lens), self.device
        starts = starts or [0] * B
        start_t = torch.tensor(starts, device=dev)
        valid = torch.tensor([b * T + t for b in range(B) for t in range(lens[b])], device=dev)
        b_idx = valid // T
        positions = start_t[b_idx] + valid % T if packed else start_t[:, None] + torch.arange(T, device=dev)
        G = self.args.n_heads // self.args.n_kv_heads
        q_pos = torch.arange(T, device=dev).repeat(G)  # query rows are (group member, position)
        context = None
        if max(starts) == 0:
            mask = (torch.arange(T, device=dev)[None, :] <= q_pos[:, None])[None, None] if T > 1 else None
        else:  # keys of the row's cache, up to each query's own position
            context = max(a + n for a, n in zip(starts, lens, strict=True))
            keys = torch.arange(self.cache.read_len(context), device=dev)
            mask = (keys[None, None, :] <= (start_t[:, None] + q_pos[None, :])[:, :, None])[:, None]
        cos, sin = self.cos[positions].unsqueeze(-2), self.sin[positions].unsqueeze(-2)
        step = Step(positions, cos, sin, mask, context, rows=rows, packed=(B, T, valid) if packed else None)
        if write:
            index = None if packed or min(lens) == T else valid  # a packed pass holds only real tokens
            step.write = (index, self.cache.slots(b_idx if rows is None else rows[b_idx], start_t[b_idx] + valid % T))
        return step

    def _decode_step(self, lens_t: torch.Tensor, lens: list[int], rows: torch.Tensor | None = None) -> Step:
        """Step for one new token per sequence at position lens[b] (its current length) of cache row rows[b]."""
        B = len(lens)
        pos = lens_t[:, None]
        context = max(lens) + 1
        key_len = self.cache.read_len(context)
        mask = None
        if key_len != context or min(lens) != max(lens):
            mask = (torch.arange(key_len, device=self.device)[None, :] <= pos)[:, None, None, :]
        slots = self.cache.slots(torch.arange(B, device=self.device) if rows is None else rows, lens_t)
        return Step(pos, self.cos[pos][:, :, None], self.sin[pos][:, :, None], mask, context, write=(None, slots),
                    rows=rows)

    @torch.inference_mode()
    def logits(self, input_ids) -> torch.Tensor:
        """Float32 logits [B, T, vocab] of the prefill path for equal-length prompts (no cache involved)."""
        if isinstance(input_ids, torch.Tensor) and (input_ids.is_floating_point() or input_ids.dtype == torch.bool):
            raise ValueError(f"input_ids must hold integer token ids, not {input_ids.dtype}")
        if not isinstance(input_ids, torch.Tensor):
            self._check_ids([t for row in input_ids for t in (row if isinstance(row, (list, tuple)) else [row])])
        ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.device)
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [batch, tokens] with tokens >= 1, got shape {tuple(ids.shape)}")
        self._check_ids(ids.flatten().tolist())
        if ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"{ids.shape[1]} tokens exceed max_seq_len={self.config.max_seq_len}")
        step = self._prefill_step([ids.shape[1]] * ids.shape[0], ids.shape[1], write=False)
        return self.model.forward(ids, step, None, torch_ops)

    @torch.inference_mode()
    def score(self, ids, prefix: int) -> torch.Tensor:
        """Teacher forcing through the KV cache: float32 logits [B, T - prefix, V] that predict tokens prefix..T-1
        of the equal-length rows `ids` [B, T]. The first `prefix` tokens are prefilled; every later token is fed
        by a decode step that reads the cache, so the KV dtype (int8, fp8) and the decode path are measured."""
        rows = [list(r) for r in ids]
        B, T = len(rows), len(rows[0]) if rows else 0
        if not rows or any(len(r) != T for r in rows) or not 1 <= prefix < T:
            raise ValueError(f"score needs equal-length rows of more than prefix={prefix} tokens")
        if B > self.config.batch_size or T > self.config.max_seq_len:
            raise ValueError(f"{B} rows of {T} tokens exceed batch_size={self.config.batch_size} or "
                             f"max_seq_len={self.config.max_seq_len}")
        for r in rows:
            self._check_ids(r)
        x = torch.tensor(rows, dtype=torch.long, device=self.device)
        out = []
        with self._busy:
            self.cache.reset()
            self.cache.reserve([prefix] * B)
            last = torch.full((B,), prefix - 1, device=self.device)
            out.append(self.model.forward(x[:, :prefix], self._prefill_step([prefix] * B, prefix, write=True),
                                          self.cache, torch_ops, last=last).float().cpu())
            for t in range(prefix, T - 1):
                lens_t = torch.full((B,), t, dtype=torch.long, device=self.device)
                out.append(self._decode_logits(x[:, t], lens_t, [t] * B).float().cpu())
        return torch.stack(out, 1)

    # -- helpers ------------------------------------------------------------------------------------

    def _record(self, stats: RunStats, requests, sampling, workload, hw, ops_records, profile_info, run_id,
                rss_reset: bool) -> RunResult:
        seqs = [s for s in stats.seqs if s.admitted_ms is not None]  # a stopped run drops requests never started
        tokens = [s.tokens for s in seqs]
        metrics = {**compute_metrics([s.times_ms for s in seqs], [len(s.prompt) for s in seqs]),
                   **stats.decode_metrics(hw), "preemptions": sum(s.preemptions for s in seqs)}
        price = device_price(hw, self.config.price_per_hour)
        metrics.update(cost_metrics(metrics, price["price_per_hour"]))
        hw = {**hw, **price}
        workload.update(n_prompts=len(requests), prompt_lens=[len(p) for p in requests],
                        output_lens=[len(t) for t in tokens],
                        prompt_len_mean=sum(len(p) for p in requests) / len(requests))
        text = [self.tokenizer.decode(t, skip_special_tokens=True) for t in tokens] if self.tokenizer else None
        return RunResult(
            config=self.config.to_dict(), sampling=sampling.to_dict(), workload=workload, hardware=hw,
            metrics=metrics, tokens=tokens, text=text, stopped=stats.stopped, tuner_version=__version__,
            timings={"token_times_ms": [[round(x, 4) for x in s.times_ms] for s in seqs],
                     "prefill_ms": stats.prefill_ms, "decode_step_ms": stats.decode_ms},
            memory=self._memory(rss_reset), ops_records=ops_records, profile=profile_info, run_id=run_id,
            machine_load=stats.meter.stop(), telemetry=stats.telemetry.record(),
        )

    def _requests(self, prompts, sampling):
        sampling = sampling if sampling is not None else SamplingParams()
        if isinstance(prompts, Workload):
            workload = {"kind": "synthetic", **prompts.to_dict()}
            self._check_length(prompts.prompt_len, prompts.output_len)  # before a token is made
            check_prefill(self.config, self.args, min(prompts.batch or self.config.batch_size, self.config.batch_size),
                          prompts.prompt_len)
            requests = prompts.prompts(self.args.vocab_size, prompts.batch or self.config.batch_size)
            sampling = sampling.replace(max_new_tokens=prompts.output_len, ignore_eos=True)
        else:
            one_list = isinstance(prompts, collections.abc.Sequence) and prompts and all(isinstance(t, int)
                                                                                        for t in prompts)
            if isinstance(prompts, str) or _is_chat(prompts) or one_list:
                prompts = [prompts]
            if not isinstance(prompts, collections.abc.Sequence) or not prompts:
                raise ValueError("prompts must be a non-empty list of token-id lists, strings or chats (lists of "
                                 "{'role': ..., 'content': ...} messages), or a Workload")
            if all(isinstance(p, str) or _is_chat(p) for p in prompts):
                requests = [self.encode(p) for p in prompts]
                workload = {"kind": "chat" if self.chat_template else "text"}
            else:
                requests = [list(p.tolist() if isinstance(p, torch.Tensor) else p) for p in prompts]
                workload = {"kind": "tokens"}
        for r in requests:
            if not r:
                raise ValueError("every prompt needs at least one token")
            self._check_length(len(r), sampling.max_new_tokens)
            self._check_ids(r)
        if workload["kind"] != "synthetic":  # a Workload's prefill was checked before its prompts were built
            check_prefill(self.config, self.args, min(len(requests), self.config.batch_size),
                          max(map(len, requests)))
        return requests, sampling, workload

    @property
    def chat_template(self) -> bool:
        """Whether the tokenizer has a chat template (string prompts then go through it)."""
        return self.tokenizer is not None and bool(getattr(self.tokenizer, "chat_template", None))

    def encode(self, prompt) -> list[int]:
        """The token ids of a prompt: a chat (a list of {'role', 'content'} messages) or a string through the
        chat template with the assistant's turn opened, when the tokenizer has one; else a string as it is."""
        if self.tokenizer is None:
            raise ValueError(f"prompts are strings but {self.config.model} has no tokenizer: "
                             "pass token ids or a tuner.Workload")
        chat = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        if not self.chat_template:
            if not isinstance(prompt, str):
                raise ValueError(f"{self.config.model} has no chat template: pass a string or token ids, not messages")
            return list(self.tokenizer(prompt)["input_ids"])
        ids = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids  # transformers 5 returns a BatchEncoding
        return list(ids)

    def _check_length(self, prompt_len: int, max_new_tokens: int) -> None:
        if prompt_len + max_new_tokens > self.config.max_seq_len:
            raise ValueError(f"a prompt of {prompt_len} tokens + max_new_tokens={max_new_tokens} exceeds "
                             f"max_seq_len={self.config.max_seq_len}: raise max_seq_len or shorten the run")

    def _check_ids(self, ids: list) -> None:
        for t in ids:  # a float or a bool would be truncated into some other token
            if isinstance(t, bool) or not isinstance(t, numbers.Integral):
                raise ValueError(f"token id {short_repr(t)} is not an integer: prompts are lists of int token ids")
        bad = [t for t in ids if not 0 <= t < self.args.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {self.args.vocab_size})")

    def hardware(self) -> dict:
        """Device name and measured bandwidth / matmul rate (measured once per machine, then cached)."""
        if self._hardware is None:
            self._hardware = hardware_info(self.device, self.dtype)
        return self._hardware

    def _memory(self, rss_reset: bool) -> dict:
        mem = {"weights_bytes": self.model.weight_bytes(), "kv_cache_bytes": self.cache.nbytes, **_peak_rss(rss_reset)}
        if self.device.type == "cuda":
            mem["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
        return mem

    def warmup(self) -> None:
        """One short batch, so one-time costs (allocator growth, kernel selection) stay out of measured runs."""
        n = min(8, self.config.max_seq_len - 2)
        self.generate(Workload(batch=self.config.batch_size, prompt_len=n, output_len=2))


def _is_chat(p) -> bool:
    """A chat: a non-empty list of messages, each a dict with a role and a content string."""
    return (isinstance(p, (list, tuple)) and bool(p) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in p))


def _reset_peak_rss() -> bool:
    """Start this run's peak resident memory from now (Linux: VmHWM reset through /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss(reset: bool) -> dict:
    """The run's peak resident memory, and how it was measured: VmHWM since the run began where Linux let it be
    reset, else the process's lifetime peak (getrusage), which an earlier, larger run may have set."""
    if reset:
        try:
            with open("/proc/self/status") as f:
                hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
            return {"peak_rss_bytes": hwm, "peak_rss_scope": "run"}
        except (OSError, StopIteration, ValueError):
            pass
    return {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_rss_scope": "process"}
