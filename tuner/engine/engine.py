"""The Engine: load a model, then prefill and decode static batches. `generate()` is the decode loop."""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Callable, Sequence

import torch

from .. import __version__
from ..backends import torch_ops
from ..config import EngineConfig, SamplingParams
from ..knobs import ENGINE_KNOBS
from ..models.args import resolve_model
from ..models.loader import build_model, eos_token_ids, load_tokenizer
from ..models.model import DecodeState, Step, rope_tables
from ..profile.capture import Capture, new_run_id
from ..profile.hardware import hardware_info
from ..profile.ranges import op
from ..result import RunResult, compute_metrics
from .kv_cache import KVCache, PagedKVCache
from .sampling import sample
from .workload import Workload

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Engine:
    """A loaded model plus its KV cache, ready to generate."""

    def __init__(self, config: EngineConfig | None = None, *, progress: Callable[[int, int], None] | None = None,
                 _weights_from: Engine | None = None, **knobs):
        config = EngineConfig(**knobs) if config is None else config.replace(**knobs) if knobs else config
        self.config = config
        self.args, checkpoint = resolve_model(config.model)
        self.device, self.dtype = torch.device(config.device), _DTYPES[config.dtype]
        # The torch backend decodes through model.forward, or with cuda_graphs through the fixed-shape
        # model.decode step on torch_ops; the cupy backend always through model.decode and its kernels
        # (tests run that step on CPU with torch_ops, the kernels' twins).
        self.ops, self.fixed_decode = torch_ops, config.cuda_graphs
        if config.backend == "cupy":
            from ..backends import cupy_ops

            why = cupy_ops.supported(self.args.head_dim, self.dtype, self.args.n_heads, self.args.n_kv_heads)
            if why:
                raise ValueError(f"{why} ({config.model}): use backend='torch'")
            self.ops, self.fixed_decode = cupy_ops, True
        if _weights_from is not None:  # same weights, other runtime knobs (see replace())
            self.model, self.load_s = _weights_from.model, 0.0
            self.tokenizer, self.eos_ids = _weights_from.tokenizer, _weights_from.eos_ids
        else:
            t = time.perf_counter()
            weights = None if config.weights == "dummy" else checkpoint
            self.model = build_model(self.args, weights, self.dtype, self.device, config.quant, config.group_size,
                                     config.seed, progress)
            self.load_s = time.perf_counter() - t
            self.tokenizer = load_tokenizer(checkpoint)
            self.eos_ids = eos_token_ids(self.args, checkpoint)
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
        self.graphs = CudaGraphs(self) if graphs else None

    @classmethod
    def from_file(cls, path, progress: Callable[[int, int], None] | None = None) -> Engine:
        """The engine of a tuner.config/1 file (`tuner.export(..., "tuner")`); `tuner.load_config(path)` also
        returns its SamplingParams."""
        from ..tune.export import load_config

        config, _ = load_config(path)
        return cls(config, progress=progress)

    def replace(self, progress: Callable[[int, int], None] | None = None, **knobs) -> Engine:
        """An engine with these knobs changed. It shares this engine's loaded weights unless a knob that
        shapes them changes (model, weights, device, dtype, quant, group_size, seed: see Knob.reload)."""
        config = self.config.replace(**knobs)
        if any(getattr(config, k.name) != getattr(self.config, k.name) for k in ENGINE_KNOBS.values() if k.reload):
            return Engine(config, progress=progress)
        return Engine(config, _weights_from=self)

    # -- one forward pass -------------------------------------------------------------------------

    def _prefill_step(self, lens: list[int], T: int, write: bool) -> Step:
        """Step for prompts of `lens` right-padded to T, attending causally within themselves."""
        B, dev = len(lens), self.device
        positions = torch.arange(T, device=dev).expand(B, T)
        G = self.args.n_heads // self.args.n_kv_heads
        q_pos = torch.arange(T, device=dev).repeat(G)  # query rows are (group member, position)
        mask = (torch.arange(T, device=dev)[None, :] <= q_pos[:, None])[None, None] if T > 1 else None
        step = Step(positions, self.cos[positions][:, :, None], self.sin[positions][:, :, None], mask, None)
        if write:
            valid = torch.tensor([b * T + t for b in range(B) for t in range(lens[b])], device=dev)
            index = None if min(lens) == T else valid
            step.write = (index, self.cache.slots(valid // T, valid % T))
        return step

    def _decode_step(self, lens_t: torch.Tensor, lens: list[int]) -> Step:
        """Step for one new token per sequence at position lens[b] (its current length)."""
        B = len(lens)
        pos = lens_t[:, None]
        context = max(lens) + 1
        key_len = self.cache.read_len(context)
        mask = None
        if key_len != context or min(lens) != max(lens):
            mask = (torch.arange(key_len, device=self.device)[None, :] <= pos)[:, None, None, :]
        slots = self.cache.slots(torch.arange(B, device=self.device), lens_t)
        return Step(pos, self.cos[pos][:, :, None], self.sin[pos][:, :, None], mask, context, write=(None, slots))

    @torch.inference_mode()
    def logits(self, input_ids) -> torch.Tensor:
        """Float32 logits [B, T, vocab] of the prefill path for equal-length prompts (no cache involved)."""
        ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.device)
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [batch, tokens] with tokens >= 1, got shape {tuple(ids.shape)}")
        self._check_ids(ids.flatten().tolist())
        if ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"{ids.shape[1]} tokens exceed max_seq_len={self.config.max_seq_len}")
        step = self._prefill_step([ids.shape[1]] * ids.shape[0], ids.shape[1], write=False)
        return self.model.forward(ids, step)

    # -- generation ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompts, sampling: SamplingParams | None = None, profile: bool = False,
                 on_step: Callable[[dict], bool | None] | None = None, logdir: str | None = None) -> RunResult:
        """Generate for `prompts` (token-id lists, strings, or a Workload) in static batches of batch_size.

        on_step(event) is called after each prefill and decode step with progress figures; returning
        True stops the run, keeping what finished. profile=True runs under torch.profiler: the result's
        `ops` table explains each op per phase (time, FLOPs, bytes, achieved rates, bound) and its traces
        land in <logdir>/<run_id>/ (logdir defaults to tuner.profile.capture.default_logdir()).
        """
        requests, sampling, workload = self._requests(prompts, sampling)
        hw = self.hardware()
        run_id = new_run_id()
        self._cap = Capture(self.device, logdir, run_id) if profile else None
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        # the fused sampler's random state (seed, offset, blocks done) lives on the device
        self._rng = torch.tensor([sampling.seed, 0, 0], dtype=torch.long, device=self.device)
        stops = set(sampling.stop_token_ids) | (set() if sampling.ignore_eos else set(self.eos_ids))
        B = self.config.batch_size
        n_batches = -(-len(requests) // B)
        tokens, times, prefill_ms, decode = [], [], [], {"step_ms": [], "bytes": [], "flops": []}
        stopped = False
        t0 = time.perf_counter()
        with self._cap or contextlib.nullcontext():
            for i in range(n_batches):
                batch = requests[i * B:(i + 1) * B]
                out, out_times, stopped = self._run_batch(batch, sampling, generator, stops, t0, prefill_ms, decode,
                                                          on_step, (i, n_batches, len(requests)))
                tokens += out
                times += out_times
                if stopped:
                    break
        ops_records, profile_info = [], {}
        if self._cap is not None:
            ops_records, profile_info = self._cap.finish(self.config.to_dict(), hw, sampling.temperature == 0.0,
                                                         self.args)
            self._cap = None
        prompt_lens = [len(p) for p in requests[: len(tokens)]]
        metrics = compute_metrics(times, prompt_lens)
        decode_s = sum(decode["step_ms"]) / 1e3
        if decode_s:
            metrics["decode_gbs"] = sum(decode["bytes"]) / decode_s / 1e9
            metrics["mbu"] = metrics["decode_gbs"] / hw["bandwidth_gbs"]
            metrics["mfu"] = sum(decode["flops"]) / decode_s / 1e12 / hw["matmul_tflops"]
        else:
            metrics.update(decode_gbs=None, mbu=None, mfu=None)
        metrics["prefill_ms"] = sum(prefill_ms)
        workload.update(n_prompts=len(requests), prompt_lens=[len(p) for p in requests],
                        output_lens=[len(t) for t in tokens],
                        prompt_len_mean=sum(len(p) for p in requests) / len(requests))
        text = [self.tokenizer.decode(t, skip_special_tokens=True) for t in tokens] if self.tokenizer else None
        return RunResult(
            config=self.config.to_dict(), sampling=sampling.to_dict(), workload=workload, hardware=hw,
            metrics=metrics, tokens=tokens, text=text, stopped=stopped, tuner_version=__version__,
            timings={"token_times_ms": [[round(x, 4) for x in t] for t in times], "prefill_ms": prefill_ms,
                     "decode_step_ms": decode["step_ms"]},
            memory=self._memory(), ops_records=ops_records, profile=profile_info, run_id=run_id,
        )

    def _run_batch(self, prompts, sampling, generator, stops, t0, prefill_ms, decode, on_step, where):
        """Prefill one static batch, then decode it token by token. Returns (tokens, times_ms, stopped)."""
        batch_index, n_batches, n_requests = where
        B, lens = len(prompts), [len(p) for p in prompts]
        T, dev, a, cache = max(lens), self.device, self.args, self.cache
        cache.reset()
        cache.reserve(lens)
        ids = torch.zeros(B, T, dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, : len(p)] = torch.tensor(p)
        ids, lens_t = ids.to(dev), torch.tensor(lens, device=dev)
        seen = None
        if sampling.repetition_penalty != 1.0:
            seen = torch.zeros(B, a.vocab_size, dtype=torch.bool, device=dev)
            for b, p in enumerate(prompts):
                seen[b, p] = True
        out: list[list[int]] = [[] for _ in range(B)]
        out_times: list[list[float]] = [[] for _ in range(B)]
        done = [False] * B

        def queue(tok: torch.Tensor) -> tuple[torch.Tensor, object]:
            """Start copying sampled tokens to the host; returns (host tensor, event to wait on)."""
            if seen is not None:  # on the device, in order: the next step's penalty sees these tokens
                seen[torch.arange(B, device=dev), tok] = True
            if dev.type != "cuda":
                return tok, None
            host = torch.empty(B, dtype=tok.dtype, pin_memory=True)
            host.copy_(tok, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record()
            return host, ev

        def emit(host: torch.Tensor, ev, last: float, phase: str) -> tuple[float, float, bool]:
            """Wait for queued tokens and record them; returns (now, step ms since `last`, whether on_step asked
            to stop)."""
            if ev is not None:
                ev.synchronize()
            new = host.tolist()
            now = time.perf_counter()
            for b in range(B):
                if not done[b]:
                    out[b].append(new[b])
                    out_times[b].append((now - t0) * 1e3)
                    done[b] = new[b] in stops or len(out[b]) >= sampling.max_new_tokens
            step_ms = (now - last) * 1e3
            stop = on_step is not None and bool(on_step({
                "phase": phase, "batch_index": batch_index, "n_batches": n_batches, "step_ms": step_ms,
                "elapsed_s": now - t0, "tokens": sum(map(len, out)), "batch_tokens_max": B * sampling.max_new_tokens,
                "n_requests": n_requests}))
            return now, step_ms, stop

        # prefill: all prompts at once, logits only at each prompt's last token
        start = time.perf_counter()
        with op("prefill"):
            logits = self.model.forward(ids, self._prefill_step(lens, T, write=True), cache, last=lens_t - 1)
            next_tok = self._sample(logits, sampling, generator, seen)
            host, ev = queue(next_tok)
            if self._cap is not None:
                self._cap.sync()
        if self._cap is not None:
            self._cap.step("prefill", [(n, 0) for n in lens], B)
        last, step_ms, stopped = emit(host, ev, start, "prefill")
        prefill_ms.append(step_ms)

        # decode: one token per sequence per step. The host queues step k+1 before it waits for step k's
        # tokens (it needs them only to stop), so the device does not idle while Python prepares a step. A
        # sequence that stops on a stop token has one step queued past it, whose token is dropped.
        weight_bytes = self.model.decode_weight_bytes()
        flops_per_token = 2 * sum(o * i for o, i in a.linear_shapes().values()) * a.n_layers + 2 * a.dim * a.vocab_size
        pending = None  # the queued step: (host tokens, event, context it attended to)
        while not all(done) and not stopped:
            ahead = pending is not None
            more = any(not done[b] and len(out[b]) + ahead < sampling.max_new_tokens for b in range(B))
            with op("decode"):  # the range spans queueing step k+1 and waiting for step k: one step's wall time
                queued = None
                if more:
                    cache.reserve([n + 1 for n in lens])
                    if self.fixed_decode:
                        logits = self._fixed_decode(next_tok, lens_t, lens)
                    else:
                        logits = self.model.forward(next_tok[:, None], self._decode_step(lens_t, lens), cache)[:, 0]
                    next_tok = self._sample(logits, sampling, generator, seen)
                    if self._cap is not None:
                        self._cap.step("decode", [(1, n) for n in lens], B)
                    lens = [n + 1 for n in lens]
                    lens_t += 1
                    queued = (*queue(next_tok), sum(lens))  # context: keys each sequence attended to, summed
                if pending is not None:
                    host, ev, context = pending
                    last, step_ms, stopped = emit(host, ev, last, "decode")
                    decode["step_ms"].append(step_ms)
                    decode["bytes"].append(weight_bytes + context * cache.bytes_per_token)
                    decode["flops"].append(B * flops_per_token + 4 * a.n_heads * a.head_dim * a.n_layers * context)
            pending = queued
        return out, out_times, stopped

    def _sample(self, logits, sampling, generator, seen):
        with op("sampling"):
            if self.ops is not torch_ops:  # the cupy backend's fused sampler
                return self.ops.sample(logits, sampling, self._rng, seen)
            return sample(logits, sampling, generator, seen)

    def _fixed_decode(self, tokens: torch.Tensor, lens_t: torch.Tensor, lens: list[int]) -> torch.Tensor:
        """Logits [B, V] of the fixed-shape decode step (replayed from a CUDA graph when cuda_graphs=True)."""
        B = len(lens)
        if self.graphs is not None:
            return self.graphs.run(tokens, lens_t, self.cache.decode_tables(B), max(lens) + 1)
        positions = lens_t.to(torch.int32)
        st = DecodeState(tokens, positions, positions + 1, self.cache.decode_tables(B), self.cache.block_len, self.cos,
                         self.sin, self.plan(B, max(lens) + 1))
        return self.model.decode(st, self.cache, self.ops)

    def plan(self, B: int, max_len: int):
        """The attention plan for B sequences of up to max_len tokens (one per batch size and 256-token band)."""
        key = (B, -(-max_len // 256) * 256)
        if key not in self._plans:
            a = self.args
            self._plans[key] = self.ops.plan_attention(B, a.n_heads, a.n_kv_heads, a.head_dim,
                                                       min(key[1], self.config.max_seq_len), self.device)
        return self._plans[key]

    # -- helpers -----------------------------------------------------------------------------------

    def _requests(self, prompts, sampling):
        sampling = sampling if sampling is not None else SamplingParams()
        if isinstance(prompts, Workload):
            workload = {"kind": "synthetic", **prompts.to_dict()}
            requests = prompts.prompts(self.args.vocab_size, prompts.batch or self.config.batch_size)
            sampling = sampling.replace(max_new_tokens=prompts.output_len, ignore_eos=True)
        else:
            if isinstance(prompts, str) or (isinstance(prompts, Sequence) and prompts
                                            and all(isinstance(t, int) for t in prompts)):
                prompts = [prompts]
            if not isinstance(prompts, Sequence) or not prompts:
                raise ValueError("prompts must be a non-empty list of token-id lists or strings, or a Workload")
            if all(isinstance(p, str) for p in prompts):
                if self.tokenizer is None:
                    raise ValueError(f"prompts are strings but {self.config.model} has no tokenizer: "
                                     "pass token ids or a tuner.Workload")
                requests = [self.tokenizer(p)["input_ids"] for p in prompts]
                workload = {"kind": "text"}
            else:
                requests = [list(p.tolist() if isinstance(p, torch.Tensor) else p) for p in prompts]
                workload = {"kind": "tokens"}
        for r in requests:
            if not r:
                raise ValueError("every prompt needs at least one token")
            self._check_ids(r)
            if len(r) + sampling.max_new_tokens > self.config.max_seq_len:
                raise ValueError(f"a prompt of {len(r)} tokens + max_new_tokens={sampling.max_new_tokens} exceeds "
                                 f"max_seq_len={self.config.max_seq_len}: raise max_seq_len or shorten the run")
        return requests, sampling, workload

    def _check_ids(self, ids: list[int]) -> None:
        bad = [t for t in ids if not 0 <= t < self.args.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {self.args.vocab_size})")

    def hardware(self) -> dict:
        """Device name and measured bandwidth / matmul rate (measured once per machine, then cached)."""
        if self._hardware is None:
            self._hardware = hardware_info(self.device, self.dtype)
        return self._hardware

    def _memory(self) -> dict:
        mem = {"weights_bytes": self.model.weight_bytes(), "kv_cache_bytes": self.cache.nbytes,
               "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        if self.device.type == "cuda":
            mem["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated(self.device)
        return mem

    def warmup(self) -> None:
        """One short batch, so one-time costs (allocator growth, kernel selection) stay out of measured runs."""
        n = min(8, self.config.max_seq_len - 2)
        self.generate(Workload(batch=self.config.batch_size, prompt_len=n, output_len=2))




def bucket(batch: int) -> int:
    """The CUDA-graph batch bucket serving `batch` sequences: the next power of two."""
    return 1 << (batch - 1).bit_length()


class CudaGraphs:
    """The fixed-shape decode step captured once per batch bucket (1, 2, 4, 8, ...) and context band
    (256, 512, 1024, ... tokens, up to max_seq_len), and replayed.

    A batch of B runs in the graph of bucket(B): rows past B decode a dummy token into a scratch cache
    slot. The band sizes the graph's attention split, so short contexts skip empty partitions.
    Inputs are copied into the graph's static buffers before each replay; the logits come back as a view
    of its static output, valid until the next replay.
    """

    def __init__(self, engine: Engine):
        self.engine, self.graphs, self.pool = engine, {}, None
        self.capture_s: dict[tuple[int, int], float] = {}

    def band(self, max_len: int) -> int:
        return min(self.engine.config.max_seq_len, max(256, bucket(max_len)))

    def run(self, tokens: torch.Tensor, lens_t: torch.Tensor, tables: torch.Tensor, max_len: int) -> torch.Tensor:
        """Logits [B, V] of one decode step; max_len: the longest sequence once this token is in."""
        B = tokens.shape[0]
        key = (bucket(B), self.band(max_len))
        graph, st, logits = self.graphs.get(key) or self._capture(*key)
        st.tokens[:B].copy_(tokens)
        st.tokens[B:].zero_()
        st.positions[:B].copy_(lens_t)
        st.positions[B:].zero_()
        torch.add(st.positions, 1, out=st.seq_lens)
        st.tables[:B].copy_(tables[:, : st.tables.shape[1]])
        st.tables[B:].fill_(self.engine.cache.scratch)
        with op("cuda_graph"):  # the profiler sees the step as one range: its kernels were captured, not called
            graph.replay()
        return logits[:B]

    def _capture(self, Bp: int, band: int):
        e = self.engine
        t = time.perf_counter()
        a, cache = e.args, e.cache
        # the band's blocks only: the torch twins read every block of the table they are given
        width = min(cache.decode_tables(1).shape[1], -(-band // cache.block_len))
        dev = e.device
        st = DecodeState(tokens=torch.zeros(Bp, dtype=torch.long, device=dev),
                         positions=torch.zeros(Bp, dtype=torch.int32, device=dev),
                         seq_lens=torch.ones(Bp, dtype=torch.int32, device=dev),
                         tables=torch.full((Bp, width), cache.scratch, dtype=torch.int32, device=dev),
                         block_size=cache.block_len, cos=e.cos, sin=e.sin,
                         plan=e.ops.plan_attention(Bp, a.n_heads, a.n_kv_heads, a.head_dim, band, dev))
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm up: compile and load kernels, settle the allocator
            for _ in range(2):
                e.model.decode(st, cache, e.ops)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=side):
            logits = e.model.decode(st, cache, e.ops)
        self.pool = graph.pool()
        self.graphs[Bp, band] = (graph, st, logits)
        self.capture_s[Bp, band] = time.perf_counter() - t
        return self.graphs[Bp, band]
