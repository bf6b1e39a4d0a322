"""The scheduler: which requests compute which tokens in each engine step (continuous batching).

Requests wait in arrival order. Each step the scheduler picks work under a token budget
(`max_num_batched_tokens`, 0: none) and a cap on running sequences (`batch_size`, vLLM's max_num_seqs): first
one token for every running sequence that is decoding, then the prompts of running sequences still
prefilling, then new requests from the queue. With chunked prefill a prompt is cut to what the budget has
left, and its chunks run beside other sequences' decodes; without it a prompt prefills whole or waits. When the
paged KV pool has no block for a decode, the newest running sequence is preempted by recompute (its blocks
freed; it queues first and prefills its prompt and the tokens it made again), as vLLM does. With prefix
caching, full blocks are known by the hash of their token chain and shared across sequences
(engine/kv_cache.BlockAllocator). `scheduling="static"` admits a new batch only when the last one has
finished: tuner's static batching, the baseline continuous batching is measured against.

A static `generate()` is the case where every request arrives at t=0: the same scheduler and the same loop
(Engine._loop). This module decides; it runs nothing on the device.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(eq=False)  # compared by identity: the scheduler's lists hold the sequences themselves
class Sequence:
    """One request: its prompt, when it stops, the tokens it made with their times (ms since the run began),
    and where it stands in the cache."""

    prompt: list[int]
    max_new_tokens: int
    stops: frozenset[int] = frozenset()
    tokens: list[int] = field(default_factory=list)
    times_ms: list[float] = field(default_factory=list)
    done: bool = False
    id: int = 0
    arrival_ms: float = 0.0
    row: int | None = None  # its cache row while running
    cached: int = 0  # tokens of prompt + tokens that are in the KV cache
    inflight: int = 0  # tokens sampled on the device and not read yet
    admitted_ms: float | None = None  # first scheduled
    finished_ms: float | None = None
    wave: int = -1  # the admission wave it joined in (a static batch's index)
    preemptions: int = 0
    prefix_hit_tokens: int = 0  # tokens its prefills took from the prefix cache instead of computing
    prefill_tokens: int = 0  # prompt (and recomputed) tokens its prefills computed
    hashes: list[int] = field(default_factory=list)  # chain hashes of its full blocks, as far as known
    indexed: int = 0  # of its blocks, how many are in the prefix index

    def add(self, token: int, time_ms: float) -> None:
        self.tokens.append(token)
        self.times_ms.append(time_ms)
        self.done = token in self.stops or len(self.tokens) >= self.max_new_tokens

    @property
    def known(self) -> list[int]:
        """The tokens the host knows: the prompt, then what was generated."""
        return self.prompt + self.tokens

    @property
    def n_known(self) -> int:
        return len(self.prompt) + len(self.tokens)

    @property
    def decoding(self) -> bool:
        """Its newest token (sampled, on the device) is the only one not in the cache: it can take a decode row."""
        return self.cached == len(self.prompt) + len(self.tokens) + self.inflight - 1 and self.cached > 0

    @property
    def wants_token(self) -> bool:
        return not self.done and len(self.tokens) + self.inflight < self.max_new_tokens


@dataclass
class StepPlan:
    """One step's work: prefill chunks (sequence, first token, end) and decode rows."""

    prefill: list[tuple[Sequence, int, int]]
    decode: list[Sequence]
    admitted: list[Sequence]  # sequences that took a cache row in this step

    def __bool__(self) -> bool:
        return bool(self.prefill or self.decode)

    @property
    def phase(self) -> str:
        return "mixed" if self.prefill and self.decode else "prefill" if self.prefill else "decode"


def chain_hashes(tokens: list[int], block_size: int, prev: list[int]) -> list[int]:
    """`prev` extended with the chain hash of every further full block of `tokens` (each hash covers its block
    and every token before it)."""
    out = list(prev)
    for i in range(len(out), len(tokens) // block_size):
        out.append(hash((out[-1] if out else 0, tuple(tokens[i * block_size:(i + 1) * block_size]))))
    return out


class Scheduler:
    def __init__(self, cache, rows: int, budget: int = 0, chunked: bool = False, prefix_caching: bool = False,
                 static: bool = False):
        self.cache, self.budget, self.chunked, self.static = cache, budget, chunked, static
        self.prefix_caching = prefix_caching
        self.block_size = getattr(cache, "block_size", 0)
        self.future: deque[Sequence] = deque()  # not arrived yet, in arrival order
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order: the last is the newest
        self.free_rows = list(range(rows - 1, -1, -1))
        self.waves = 0
        self.preemptions = 0
        self.max_concurrency = 0  # 0: no limit
        self.last_finish_ms = 0.0

    # -- requests ---------------------------------------------------------------------------------------

    def add(self, seqs: list[Sequence]) -> None:
        self.future.extend(sorted(seqs, key=lambda s: s.arrival_ms))

    def arrive(self, now_ms: float) -> None:
        """Requests whose arrival time has come join the queue. With max_concurrency (a client that keeps at
        most that many requests in flight, as vLLM's benchmark does) a request beyond it is sent, and so
        arrives, only when one in flight has finished."""
        while self.future and self.future[0].arrival_ms <= now_ms:
            if self.max_concurrency and len(self.waiting) + len(self.running) >= self.max_concurrency:
                return
            seq = self.future.popleft()
            if self.max_concurrency:
                seq.arrival_ms = max(seq.arrival_ms, min(now_ms, self.last_finish_ms))
            self.waiting.append(seq)

    def next_arrival_ms(self) -> float | None:
        return self.future[0].arrival_ms if self.future else None

    @property
    def idle(self) -> bool:
        """Nothing left: every request arrived and finished."""
        return not (self.future or self.waiting or self.running)

    def figures(self) -> dict:
        """Where the queue stands after scheduling a step: running and waiting requests, KV blocks in use."""
        used = getattr(self.cache, "allocator", None)
        return {"running": len(self.running), "waiting": len(self.waiting),
                "kv_blocks_used": None if used is None else used.num_blocks - used.available}

    def retire(self, seq: Sequence, now_ms: float) -> None:
        """A running sequence finished: its row and blocks go back (its indexed blocks stay cached)."""
        seq.finished_ms = self.last_finish_ms = now_ms
        if seq in self.running:
            self.running.remove(seq)
            self._free(seq)

    # -- one step -----------------------------------------------------------------------------------------

    def schedule(self, now_ms: float) -> StepPlan:
        budget = self.budget or 1 << 62
        decode = []
        for seq in list(self.running):  # oldest first: preemption takes the newest
            if seq.row is None or not (seq.decoding and seq.wants_token):  # row None: preempted just now
                continue
            if not self._make_room(seq, seq.cached + 1):
                continue  # it was preempted itself
            decode.append(seq)
        decode = [s for s in decode if s.row is not None]
        budget -= len(decode)
        prefill = []
        for seq in self.running:  # prompts of sequences admitted earlier, still prefilling (chunked)
            # (a decoding sequence's one uncached token is its newest, which its decode row computes)
            if budget > 0 and not seq.inflight and not seq.decoding and seq.cached < seq.n_known:
                end = self._chunk_end(seq, budget)
                if end is not None:
                    prefill.append((seq, seq.cached, end))
                    budget -= end - seq.cached
        admitted = []
        while (self.waiting and self.free_rows and budget > 0 and not self.waiting[0].inflight
               and not (self.static and self.running and not admitted)):
            seq = self.waiting[0]
            seq.row = self.free_rows.pop()
            if self.prefix_caching:
                seq.hashes = chain_hashes(seq.known, self.block_size, seq.hashes)
                usable = (seq.n_known - 1) // self.block_size  # at least one token is computed, for its logits
                seq.cached = self.cache.share_prefix(seq.row, seq.hashes[:usable])
                seq.indexed = seq.cached // self.block_size
                seq.prefix_hit_tokens += seq.cached
            end = self._chunk_end(seq, budget)
            if end is None:  # the budget or the pool cannot take its first chunk yet
                seq.prefix_hit_tokens -= seq.cached
                self._free(seq)
                break
            self.waiting.popleft()
            self.running.append(seq)
            admitted.append(seq)
            if seq.admitted_ms is None:
                seq.admitted_ms = now_ms
            prefill.append((seq, seq.cached, end))
            budget -= end - seq.cached
        if admitted:
            for seq in admitted:
                seq.wave = self.waves
            self.waves += 1
        for seq, start, end in prefill:
            seq.prefill_tokens += end - start
        return StepPlan(prefill, decode, admitted)

    def _chunk_end(self, seq: Sequence, budget: int) -> int | None:
        """Where this step's prefill chunk of `seq` ends (its blocks taken), or None if it cannot run now."""
        todo = seq.n_known - seq.cached
        n = min(todo, budget) if self.chunked else todo
        if n > budget:
            return None
        while n > 0 and self.cache.blocks_to_grow(seq.row, seq.cached + n) > self.cache.free_blocks:
            if not self.chunked:
                return None
            n = (seq.cached + n - 1) // self.block_size * self.block_size - seq.cached  # one block less
        if n <= 0:
            return None
        self.cache.grow(seq.row, seq.cached + n)
        return seq.cached + n

    def _make_room(self, seq: Sequence, n_tokens: int) -> bool:
        """Take the blocks `seq` needs to hold n_tokens, preempting the newest running sequences (perhaps `seq`
        itself: then False)."""
        while self.cache.blocks_to_grow(seq.row, n_tokens) > self.cache.free_blocks:
            victim = self.running[-1]
            self._preempt(victim)
            if victim is seq:
                return False
        self.cache.grow(seq.row, n_tokens)
        return True

    def _preempt(self, seq: Sequence) -> None:
        """By recompute: its blocks are freed and it queues first, to prefill prompt + tokens again."""
        self.running.remove(seq)
        self._free(seq)
        seq.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(seq)

    def _free(self, seq: Sequence) -> None:
        self.cache.free_row(seq.row)
        self.free_rows.append(seq.row)
        seq.row, seq.cached, seq.indexed = None, 0, 0

    def index(self, seq: Sequence) -> None:
        """Put the sequence's newly full, known blocks in the prefix index."""
        if not self.prefix_caching or seq.row is None:
            return
        full = min(seq.cached, seq.n_known) // self.block_size
        if full > seq.indexed:
            seq.hashes = chain_hashes(seq.known[:full * self.block_size], self.block_size, seq.hashes)
            self.cache.index_blocks(seq.row, seq.hashes[seq.indexed:full], seq.indexed)
            seq.indexed = full
