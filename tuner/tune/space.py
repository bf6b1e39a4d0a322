"""What a sweep searches and what it asks of each trial: the space, the objectives, the constraints.

A space maps knob names from the registry to candidate values:

    {"batch_size": [1, 4, 8], "quant": ["none", "int8", "int4"], "temperature": {"low": 0.1, "high": 1.0}}

(a list is categorical; {low, high[, log, step]} is a range of an int or float knob), as a dict or YAML.
Objectives name a metric of the run record, with a direction ("max:output_tok_s", "min:tpot_ms_p99";
a bare name takes the metric's natural direction). Constraints are SLOs: "ttft_ms_p99 <= 200".
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import read_yaml
from ..knobs import Knob, lookup, shared_names
from ..result import PERCENTILES

NOT_SWEPT = {"max_new_tokens", "stop_token_ids", "ignore_eos"}  # the workload fixes these

_LATENCY = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")
# metric -> natural direction
METRICS: dict[str, str] = {
    **{m: "min" for m in _LATENCY}, **{f"{m}_p{p}": "min" for m in _LATENCY for p in PERCENTILES},
    "output_tok_s": "max", "total_tok_s": "max", "request_s": "max", "mbu": "max", "mfu": "max",
    "decode_gbs": "max", "prefill_ms": "min", "duration_s": "min",
    "decode_bytes_per_token": "min",  # analytic: weights and KV a decode step reads over the tokens it computes
    "usd_per_1m_output_tokens": "min", "usd_per_1m_tokens": "min",  # at the device's price (profile/prices.py)
    # quality against the float32 reference with the same weights, through the KV cache (quality.py)
    "kl_mean": "min", "kl_p99": "min", "top1_agreement": "max", "perplexity": "min", "greedy_match": "max",
    # serving trials (sweep(traffic=..., slo=...): tuner/serve/metrics.py), with p95 and the queue time besides
    **{f"{m}_p95": "min" for m in (*_LATENCY, "queue_ms")}, "queue_ms": "min", "queue_ms_p99": "min",
    "goodput_req_s": "max", "slo_attainment": "max", "request_throughput": "max", "capacity_req_s": "max",
    "preemptions": "min",
}
QUALITY_METRICS = ("kl_mean", "kl_p99", "top1_agreement", "perplexity", "greedy_match")


def _knob(name: str) -> tuple[str, str, Knob]:
    """(group, registry name, knob) of a space key (knobs.lookup, less those the workload fixes); ValueError
    naming the knobs when it is unknown."""
    found = lookup(name)
    if found is not None and found[0] != "workload" and found[1] not in NOT_SWEPT:
        return found
    known = [n for n in shared_names(NOT_SWEPT) if lookup(n)[0] != "workload"]  # the sweep's workload fixes these
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ValueError(f"unknown knob {name!r} in the sweep space{hint}: knobs are {', '.join(known)}")


@dataclass(frozen=True)
class Dim:
    """One searched knob: categorical `values`, or a `low`..`high` range (int or float)."""

    name: str  # as written in the space (sampling_seed for the sampler's seed)
    group: str  # "engine" or "sampling"
    knob: str  # the registry name
    values: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def suggest(self, trial) -> Any:
        if self.values is not None:
            return trial.suggest_categorical(self.name, list(self.values))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def distribution(self):
        """The Optuna distribution `suggest` draws from (to rebuild a study from a sweep record)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.values is not None:
            return CategoricalDistribution(list(self.values))
        if isinstance(self.low, int) and isinstance(self.high, int):
            return IntDistribution(self.low, self.high, log=self.log, step=int(self.step or 1))
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def to_spec(self) -> Any:
        if self.values is not None:
            return list(self.values)
        spec = {"low": self.low, "high": self.high}
        if self.log:
            spec["log"] = True
        if self.step is not None:
            spec["step"] = self.step
        return spec


class Space:
    """The knobs a sweep varies, each checked against the registry when the space is made."""

    def __init__(self, spec: dict[str, Any] | str | Path):
        if isinstance(spec, (str, Path)):
            spec = read_yaml(spec, "sweep space")
        if not isinstance(spec, dict) or not spec:
            raise ValueError("a sweep space is a non-empty mapping of knob -> [values] or {low, high}, "
                             "e.g. {'batch_size': [1, 4, 8], 'quant': ['none', 'int8']}")
        self.dims: list[Dim] = [self._dim(str(k), v) for k, v in spec.items()]

    @staticmethod
    def _dim(name: str, spec: Any) -> Dim:
        group, reg, knob = _knob(name)
        if isinstance(spec, (list, tuple)):
            if not spec:
                raise ValueError(f"{name}: the list of values is empty")
            values = tuple(knob.parse(v) if isinstance(v, str) and knob.type is not str else knob.check(v)
                           for v in spec)
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: values repeat in {list(spec)}")
            return Dim(name, group, reg, values=values)
        if isinstance(spec, dict):
            extra = set(spec) - {"low", "high", "log", "step"}
            if extra or not {"low", "high"} <= set(spec):
                raise ValueError(f"{name}: a range is {{low, high}} with optional log and step, got {spec}")
            if knob.type not in (int, float) or knob.choices is not None:
                raise ValueError(f"{name} takes {knob.allowed()}: list its values instead of a range")
            low, high = knob.check(spec["low"]), knob.check(spec["high"])
            if low >= high:
                raise ValueError(f"{name}: low {low} must be below high {high}")
            step = spec.get("step")
            if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or not step > 0):
                raise ValueError(f"{name}: step={step!r} is not allowed: a range's step is a positive number")
            return Dim(name, group, reg, low=low, high=high, log=bool(spec.get("log", False)), step=step)
        knob.check(spec)  # a single value: say what is allowed if it is not
        raise ValueError(f"{name}: write a list of values ([{spec!r}]) or a range {{low, high}}, not a single value")

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    def grid(self) -> dict[str, list]:
        """The space as Optuna's GridSampler wants it; ValueError if a dimension is a range."""
        ranged = [d.name for d in self.dims if d.values is None]
        if ranged:
            raise ValueError(f"sampler='grid' needs lists of values, but {', '.join(ranged)} "
                             "is a range: list its values or use sampler='tpe'")
        return {d.name: list(d.values) for d in self.dims}

    def size(self) -> int | None:
        n = 1
        for d in self.dims:
            if d.values is None:
                return None
            n *= len(d.values)
        return n

    def split(self, params: dict[str, Any]) -> tuple[dict, dict]:
        """Trial params -> (engine knobs, sampling knobs) in registry names."""
        engine, sampling = {}, {}
        for d in self.dims:
            if d.name in params:
                (engine if d.group == "engine" else sampling)[d.knob] = params[d.name]
        return engine, sampling

    def to_spec(self) -> dict[str, Any]:
        return {d.name: d.to_spec() for d in self.dims}


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str  # "max" or "min"

    @property
    def optuna_direction(self) -> str:
        return "maximize" if self.direction == "max" else "minimize"

    def __str__(self) -> str:
        return f"{self.direction}:{self.metric}"


def parse_objective(text: str | Objective) -> Objective:
    if isinstance(text, Objective):
        return text
    text = str(text).strip().strip("'\"")
    m = re.fullmatch(r"\s*(?:(max|min|maximize|minimize)\s*[: ]\s*)?(\w+)\s*", text)
    if not m or m.group(2) not in METRICS:
        raise ValueError(f"objective {text!r} is not allowed: write [max:|min:]METRIC with METRIC one of "
                         f"{', '.join(METRICS)}")
    direction = (m.group(1) or METRICS[m.group(2)])[:3]
    return Objective(m.group(2), direction)


@dataclass(frozen=True)
class Constraint:
    """An SLO on a metric: feasible when `metric op bound` holds."""

    metric: str
    op: str  # "<=" or ">="
    bound: float

    def violation(self, value: float | None) -> float:
        """Optuna's convention: > 0 violates, <= 0 holds. A missing metric violates."""
        if value is None:
            return 1.0
        return value - self.bound if self.op == "<=" else self.bound - value

    def __str__(self) -> str:  # the bound exactly, never in scientific notation (1e-05 reads as 0.00001)
        return f"{self.metric} {self.op} {np.format_float_positional(self.bound, trim='-')}"


def parse_constraint(text: str | Constraint) -> Constraint:
    if isinstance(text, Constraint):
        return text
    text = str(text).strip().strip("'\"")  # a shell or a magic line may leave the quotes on
    m = re.fullmatch(r"\s*(\w+)\s*(<=|>=|<|>)\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*", text)
    if not m or m.group(1) not in METRICS:
        raise ValueError(f"constraint {text!r} is not allowed: write METRIC <= NUMBER or METRIC >= NUMBER, "
                         f"e.g. 'ttft_ms_p99 <= 200', with METRIC one of {', '.join(METRICS)}")
    op = {"<": "<=", ">": ">="}.get(m.group(2), m.group(2))
    return Constraint(m.group(1), op, float(m.group(3)))
