"""The knob registry: every engine, sampling and workload knob, defined once.

`EngineConfig` and `SamplingParams` (config.py) and `Workload` (engine/workload.py) are generated from this
table; the CLI flags, the notebook widgets, the magic's ``key=value`` parser, sweep spaces and exporters read
it too. Adding a knob is one entry here plus the code that honours it (docs/architecture.md).
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass
from typing import Any

_REPR = reprlib.Repr()  # (keyword arguments need Python 3.12)
_REPR.maxlevel, _REPR.maxstring, _REPR.maxlong, _REPR.maxother = 3, 60, 40, 60
_REPR.maxtuple = _REPR.maxlist = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 6


def short_repr(value: Any) -> str:
    """repr(value) cut to about 60 characters, at a bounded cost however large or deep the value (a YAML alias
    bomb): what error messages show of a value."""
    text = _REPR.repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


@dataclass(frozen=True)
class Knob:
    name: str
    type: type  # bool, int, float, str or tuple (of ints)
    default: Any
    help: str
    group: str  # "engine", "sampling" or "workload"
    choices: tuple | None = None
    low: float | None = None  # inclusive unless low_open
    high: float | None = None  # inclusive
    low_open: bool = False
    applies: str = "all"  # where it has an effect, in words
    reload: bool = False  # changing it rebuilds the weights (not just the run)
    min_positive: float | None = None  # a float knob's smallest value above 0 (smaller ones underflow float32)

    def allowed(self) -> str:
        """What this knob accepts, in words, for error messages and help."""
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.type is bool:
            return "True or False"
        if self.type is tuple:
            return "a list of non-negative token ids"
        if self.type is str:
            return "a string"
        lo = "-inf" if self.low is None else _fmt(self.low)
        hi = "inf" if self.high is None else _fmt(self.high)
        left, right = "(" if self.low_open else "[", "]" if self.high is not None else ")"
        tiny = f", and 0 or at least {self.min_positive:g}" if self.min_positive and not self.low_open else \
            f", at least {self.min_positive:g}" if self.min_positive else ""
        return f"{self.type.__name__} in {left}{lo}, {hi}{right}{tiny}"

    def check(self, value: Any) -> Any:
        """Return `value` coerced to this knob's type, or raise ValueError naming what is allowed."""
        try:
            return self._check(value)
        except ValueError:
            raise ValueError(f"{self.name}={short_repr(value)} is not allowed: {self.name} must be "
                             f"{self.allowed()}") from None

    def _check(self, value: Any) -> Any:
        bad = ValueError()
        if self.type is bool:
            if not isinstance(value, bool):
                raise bad
            return value
        if self.type is tuple:
            if isinstance(value, int) and not isinstance(value, bool):
                value = (value,)
            try:
                ids = tuple(value)
            except TypeError:
                raise bad from None
            if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
                raise bad
            return ids
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise bad
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise bad
            value = float(value)
        elif self.type is str and not isinstance(value, str):
            raise bad
        if self.choices is not None and value not in self.choices:
            raise bad
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            raise bad
        if self.high is not None and value > self.high:
            raise bad
        if self.min_positive is not None and 0 < value < self.min_positive:
            raise bad
        return value

    def parse(self, text: str) -> Any:
        """Parse a command-line or magic string (``"8"``, ``"true"``, ``"2,7"``) and check it."""
        text = text.strip()
        try:
            if self.type is bool:
                lowered = text.lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError
                value: Any = lowered in ("true", "1", "yes", "on")
            elif self.type is int:
                value = int(text)
            elif self.type is float:
                value = float(text)
            elif self.type is tuple:
                value = tuple(int(t) for t in text.replace(",", " ").split())
            else:
                value = text
        except ValueError:
            raise ValueError(
                f"{self.name}={short_repr(text)} is not allowed: {self.name} must be {self.allowed()}"
            ) from None
        return self.check(value)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_KNOBS = [
    # engine: what is loaded and how it runs
    Knob("model", str, "smollm2-135m", "preset or real model name (see `tuner presets`), a .gguf file or a local "
         "HF checkpoint directory",
         "engine", reload=True),
    Knob("weights", str, "auto", "'auto': the checkpoint's weights (presets: dummy); 'dummy': seeded random weights",
         "engine", choices=("auto", "dummy"), reload=True),
    Knob("device", str, "cpu", "'cpu', 'cuda' or 'cuda:N'", "engine", reload=True),
    Knob("dtype", str, "float32", "weight and activation dtype", "engine",
         choices=("float32", "bfloat16", "float16"), reload=True),
    Knob("backend", str, "auto", "op implementations: 'torch' (reference, everywhere), 'cupy' (CUDA kernels), "
         "'cpu' (tuner's C kernels for the decode step) or 'auto' (an Engine picks 'cpu' where it can run, else "
         "'torch')", "engine", choices=("auto", "torch", "cupy", "cpu"),
         applies="cupy: CUDA only, bfloat16/float16; cpu: CPU only, float32 with kv_dtype='auto'"),
    Knob("batch_size", int, 1, "sequences decoded together: a static batch, or under traffic the most running at "
         "once (vLLM's max_num_seqs)", "engine", low=1, high=4096),
    Knob("max_seq_len", int, 2048, "longest prompt + output a sequence may reach (sizes the KV cache)", "engine",
         low=16, high=1 << 20),
    Knob("quant", str, "none", "weight-only quantization of the decoder's linear layers", "engine",
         choices=("none", "int8", "int4", "fp8"), applies="fp8: CUDA with compute capability 8.9+", reload=True),
    Knob("group_size", int, 128, "int4 quantization group (must divide each layer's input width)", "engine",
         choices=(32, 64, 128, 256), applies="quant=int4", reload=True),
    Knob("kv_cache", str, "contiguous", "KV-cache layout", "engine", choices=("contiguous", "paged")),
    Knob("block_size", int, 16, "tokens per KV block", "engine", choices=(8, 16, 32, 64, 128),
         applies="kv_cache=paged"),
    Knob("num_blocks", int, 0, "KV blocks in the pool; 0 sizes it for batch_size x max_seq_len", "engine",
         low=0, high=1 << 24, applies="kv_cache=paged"),
    Knob("kv_dtype", str, "auto", "KV-cache storage: 'auto' (model dtype), 'int8' or 'fp8' (per-token scales)",
         "engine", choices=("auto", "int8", "fp8"), applies="fp8: CUDA with compute capability 8.9+"),
    Knob("cuda_graphs", bool, False, "capture the decode step in CUDA graphs per batch-size bucket", "engine",
         applies="CUDA"),
    Knob("scheduling", str, "continuous", "'continuous': requests join and leave the running batch between steps; "
         "'static': a new batch forms only when the last one has finished", "engine",
         choices=("continuous", "static")),
    Knob("max_num_batched_tokens", int, 0, "tokens one step may compute (decode rows count one each); 0: no budget, "
         "every admitted prompt prefills whole in one step", "engine", low=0, high=1 << 24),
    Knob("enable_chunked_prefill", bool, False, "split prompts into chunks that fit the token budget and run beside "
         "other requests' decodes", "engine", applies="max_num_batched_tokens > 0"),
    Knob("enable_prefix_caching", bool, False, "share the KV blocks of prompt prefixes across requests (hashed full "
         "blocks, least recently used evicted)", "engine", applies="kv_cache=paged"),
    Knob("seed", int, 0, "seed of dummy weights", "engine", low=0, high=2**63 - 1, reload=True),
    Knob("price_per_hour", float, 0.0, "the device's price in $ per hour, for $ per 1M tokens; 0: the typical "
         "on-demand price of this device (tuner/profile/prices.py)", "engine", low=0.0, high=1e6),
    # sampling: per generate() call
    Knob("max_new_tokens", int, 128, "tokens to generate per prompt", "sampling", low=1, high=1 << 20),
    Knob("temperature", float, 0.0, "0 means greedy; otherwise logits are divided by it", "sampling",
         low=0.0, high=100.0, min_positive=1e-5),
    Knob("top_k", int, 0, "keep the k most likely tokens; 0 keeps all", "sampling", low=0, high=1 << 24),
    Knob("top_p", float, 1.0, "keep the smallest set of tokens whose probability reaches p", "sampling",
         low=0.0, high=1.0, low_open=True, min_positive=1e-5),
    Knob("min_p", float, 0.0, "drop tokens less likely than min_p x the top token's probability", "sampling",
         low=0.0, high=1.0),
    Knob("repetition_penalty", float, 1.0, "divide positive (multiply negative) logits of seen tokens; 1 is off",
         "sampling", low=0.0, high=100.0, low_open=True, min_positive=1e-5),
    Knob("seed", int, 0, "seed of the sampler", "sampling", low=0, high=2**63 - 1),
    Knob("stop_token_ids", tuple, (), "token ids that end a sequence (besides EOS)", "sampling"),
    Knob("ignore_eos", bool, False, "keep generating past EOS (forced output length)", "sampling"),
    # workload: the synthetic prompts a run generates for (seeded random ids, exact lengths, forced output)
    Knob("num_prompts", int, 0, "synthetic prompts; 0: one static batch of batch_size", "workload", low=0,
         high=1 << 20),
    Knob("prompt_len", int, 128, "tokens per synthetic prompt", "workload", low=1, high=1 << 20),
    Knob("output_len", int, 64, "tokens each prompt generates (EOS ignored)", "workload", low=1, high=1 << 20),
    Knob("workload_seed", int, 0, "seed of the synthetic prompts' token ids", "workload", low=0, high=2**63 - 1),
]

ENGINE_KNOBS: dict[str, Knob] = {k.name: k for k in _KNOBS if k.group == "engine"}
SAMPLING_KNOBS: dict[str, Knob] = {k.name: k for k in _KNOBS if k.group == "sampling"}
WORKLOAD_KNOBS: dict[str, Knob] = {k.name: k for k in _KNOBS if k.group == "workload"}
# Where engine and sampling knobs share one namespace (key=value, sweep spaces, exported configs), a sampling
# knob whose name an engine knob already has is written sampling_<name>: the sampler's seed is sampling_seed.
SAMPLING_ALIASES: dict[str, str] = {f"sampling_{n}": n for n in SAMPLING_KNOBS if n in ENGINE_KNOBS}


def lookup(name: str) -> tuple[str, str, Knob] | None:
    """(group, registry name, knob) of a knob written in the shared namespace, or None if there is none."""
    if name in ENGINE_KNOBS:
        return "engine", name, ENGINE_KNOBS[name]
    if name in WORKLOAD_KNOBS:
        return "workload", name, WORKLOAD_KNOBS[name]
    reg = SAMPLING_ALIASES.get(name, name if name not in ENGINE_KNOBS else None)
    if reg in SAMPLING_KNOBS:
        return "sampling", reg, SAMPLING_KNOBS[reg]
    return None


def shared_names(skip: tuple[str, ...] = ()) -> list[str]:
    """Every knob's name in the shared namespace (sampling_seed for the sampler's seed), less `skip`."""
    sampling = [n for n in SAMPLING_KNOBS if n not in ENGINE_KNOBS] + list(SAMPLING_ALIASES)
    return sorted(n for n in [*ENGINE_KNOBS, *sampling, *WORKLOAD_KNOBS] if lookup(n)[1] not in skip)
