"""Traffic: when requests arrive and how long they are, seeded, or replayed from a JSONL trace.

Arrivals follow vLLM's serving benchmark: gaps between requests are drawn from a gamma distribution with
shape `burstiness` and mean 1/rate (burstiness 1 is a Poisson process; below 1 is burstier, above 1 steadier:
the gaps' coefficient of variation is 1/sqrt(burstiness)); rate inf sends every request at t=0. The first
request arrives at t=0. Prompt and output lengths are fixed, or drawn uniformly from an inclusive range
[low, high]. A fraction of requests may share a system prompt of `prefix_len` tokens (what prefix caching
serves). A trace replays a user's own log: one JSON object per line with `arrival_s`, `prompt_len` (or
`prompt`, text), and `output_len`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..knobs import short_repr

MAX_TRACE_BYTES = 64 << 20


@dataclass(frozen=True)
class Request:
    """One request of a traffic: when it arrives (s since the start), its prompt and how many tokens it makes."""

    arrival_s: float
    prompt: list[int]
    output_len: int


def _length(name: str, value) -> tuple[int, int]:
    """A length knob as an inclusive range: an int n is (n, n); [low, high] is itself."""
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not allowed: give a whole number >= 1 or a range [low, high]")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{name}={value} is not allowed: a length is a whole number >= 1")
        return value, value
    try:
        low, high = value
    except (TypeError, ValueError):
        raise ValueError(f"{name}={short_repr(value)} is not allowed: give a whole number >= 1 or a range "
                         "[low, high]") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)) or not 1 <= low <= high:
        raise ValueError(f"{name}={short_repr(value)} is not allowed: a range [low, high] needs whole numbers "
                         "with 1 <= low <= high")
    return int(low), int(high)


@dataclass(frozen=True)
class Traffic:
    """Requests over time for tuner.serve_bench: see the module's docstring for what each field means."""

    rate: float = math.inf  # requests per second; inf: all at t=0
    num_prompts: int = 64
    prompt_len: int | tuple[int, int] = 128
    output_len: int | tuple[int, int] = 64
    burstiness: float = 1.0
    max_concurrency: int = 0  # the client keeps at most this many requests in flight; 0: no limit
    prefix_len: int = 0  # tokens of a system prompt shared by `prefix_fraction` of the requests
    prefix_fraction: float = 0.0
    trace: str | None = None  # a JSONL file to replay instead of drawing arrivals and lengths
    seed: int = 0

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"{name}={short_repr(getattr(self, name))} is not allowed: {why}")

        num = (int, float)
        if isinstance(self.rate, bool) or not isinstance(self.rate, num) or not self.rate > 0:
            bad("rate", "the request rate must be > 0 requests per second (inf: all at once)")
        if isinstance(self.burstiness, bool) or not isinstance(self.burstiness, num) or not (
                0 < self.burstiness < math.inf):
            bad("burstiness", "it must be a finite number > 0 (1: Poisson arrivals)")
        for name, low in (("num_prompts", 1), ("max_concurrency", 0), ("prefix_len", 0), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                bad(name, f"it must be a whole number >= {low}")
        if isinstance(self.prefix_fraction, bool) or not isinstance(self.prefix_fraction, num) or not (
                0 <= self.prefix_fraction <= 1):
            bad("prefix_fraction", "it must be a fraction in [0, 1]")
        _length("prompt_len", self.prompt_len)
        _length("output_len", self.output_len)
        if self.trace is not None and not isinstance(self.trace, str):
            bad("trace", "give the path of a JSONL file")

    def replace(self, **changes) -> Traffic:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rate"] = None if math.isinf(self.rate) else self.rate  # JSON has no inf
        for k in ("prompt_len", "output_len"):
            d[k] = list(d[k]) if isinstance(d[k], tuple) else d[k]
        return d

    @classmethod
    def of(cls, traffic) -> Traffic:
        """A Traffic from a Traffic, a dict of its fields, or None (the defaults); ValueError otherwise."""
        if traffic is None:
            return cls()
        if isinstance(traffic, cls):
            return traffic
        if isinstance(traffic, dict):
            try:
                return cls.from_dict(traffic)
            except TypeError as e:
                raise ValueError(f"traffic: {e}; its fields are {', '.join(cls.__dataclass_fields__)}") from None
        raise ValueError(f"traffic={short_repr(traffic)} is not allowed: give a tuner.Traffic or a dict of its fields")

    @classmethod
    def from_dict(cls, d: dict) -> Traffic:
        d = dict(d)
        if d.get("rate") is None:
            d["rate"] = math.inf
        for k in ("prompt_len", "output_len"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        return cls(**d)

    # -- the requests ---------------------------------------------------------------------------------

    def arrivals(self, n: int | None = None) -> np.ndarray:
        """Arrival times in seconds of n requests (default num_prompts), the first at 0."""
        n = self.num_prompts if n is None else n
        if math.isinf(self.rate):
            return np.zeros(n)
        rng = np.random.default_rng(self.seed)
        gaps = rng.gamma(shape=self.burstiness, scale=1.0 / (self.rate * self.burstiness), size=n)
        return np.concatenate([[0.0], np.cumsum(gaps[:-1])]) if n else gaps

    def requests(self, vocab_size: int, tokenizer=None) -> list[Request]:
        """The requests: seeded random token ids of the drawn lengths, or the trace's lines."""
        if self.trace is not None:
            return read_trace(self.trace, vocab_size, tokenizer, self.seed)
        rng = np.random.default_rng([self.seed, 1])
        (pl, ph), (ol, oh) = _length("prompt_len", self.prompt_len), _length("output_len", self.output_len)
        prompt_lens = rng.integers(pl, ph + 1, size=self.num_prompts)
        output_lens = rng.integers(ol, oh + 1, size=self.num_prompts)
        shared = rng.random(self.num_prompts) < self.prefix_fraction
        prefix = rng.integers(0, vocab_size, size=self.prefix_len).tolist()
        out = []
        for i, t in enumerate(self.arrivals()):
            body = rng.integers(0, vocab_size, size=int(prompt_lens[i])).tolist()
            prompt = prefix + body if shared[i] and self.prefix_len else body
            out.append(Request(float(t), prompt, int(output_lens[i])))
        return out


def read_trace(path: str | Path, vocab_size: int, tokenizer=None, seed: int = 0) -> list[Request]:
    """Requests from a JSONL trace: each line an object with arrival_s (>= 0), output_len (>= 1) and either
    prompt_len (random token ids of that length, seeded) or prompt (text, through the tokenizer). Errors name
    the file and the line."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_TRACE_BYTES:
            raise ValueError(f"{path} is larger than {MAX_TRACE_BYTES >> 20} MiB: split the trace")
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"trace {path} cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"trace {path} is not UTF-8 text") from None
    rng = np.random.default_rng([seed, 2])
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{where}: not a JSON object ({e})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{where}: a line is a JSON object with arrival_s, prompt_len or prompt, output_len")
        unknown = set(row) - {"arrival_s", "prompt_len", "prompt", "output_len"}
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; known are arrival_s, prompt_len, "
                             "prompt, output_len")
        arrival = row.get("arrival_s")
        if isinstance(arrival, bool) or not isinstance(arrival, (int, float)) or not 0 <= arrival < math.inf:
            raise ValueError(f"{where}: arrival_s={short_repr(arrival)} must be a number of seconds >= 0")
        output_len = row.get("output_len")
        if isinstance(output_len, bool) or not isinstance(output_len, int) or output_len < 1:
            raise ValueError(f"{where}: output_len={short_repr(output_len)} must be a whole number >= 1")
        if ("prompt" in row) == ("prompt_len" in row):
            raise ValueError(f"{where}: give exactly one of prompt_len and prompt")
        if "prompt" in row:
            if not isinstance(row["prompt"], str) or not row["prompt"]:
                raise ValueError(f"{where}: prompt must be non-empty text")
            if tokenizer is None:
                raise ValueError(f"{where}: a text prompt needs the model's tokenizer, and this model has none: "
                                 "use prompt_len")
            prompt = list(tokenizer(row["prompt"])["input_ids"])
        else:
            n = row["prompt_len"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{where}: prompt_len={short_repr(n)} must be a whole number >= 1")
            prompt = rng.integers(0, vocab_size, size=n).tolist()
        out.append(Request(float(arrival), prompt, output_len))
    if not out:
        raise ValueError(f"trace {path} holds no requests")
    return sorted(out, key=lambda r: r.arrival_s)
