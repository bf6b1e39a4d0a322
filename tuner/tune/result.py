"""`SweepResult`: a sweep's trials (schema tuner.sweep/1), its best configurations, Pareto front and plots."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import fmt
from ..profile.load import busy as load_busy
from .space import METRICS, Constraint, Objective, parse_constraint, parse_objective

SCHEMA = "tuner.sweep/1"
MIME = "application/vnd.tuner.sweep+json"


def _dominates(a: list[float], b: list[float], objectives) -> bool:
    better = False
    for x, y, o in zip(a, b, objectives, strict=True):
        if o.direction == "max":
            x, y = -x, -y
        if x > y:
            return False
        better = better or x < y
    return better


def pareto_front(trials: list[dict], objectives) -> list[dict]:
    """The feasible trials no other feasible trial beats on every objective (duplicates left out)."""
    ok = [t for t in trials if t["feasible"] and t.get("duplicate_of") is None]
    return [t for t in ok if not any(_dominates(u["values"], t["values"], objectives) for u in ok if u is not t)]


@dataclass
class SweepResult:
    """Every trial of a sweep and what it found. `frame()` is the trials table; `best` the best feasible
    trial per objective; `pareto` the feasible front; `repeats` the top configurations re-run."""

    study_name: str
    storage: str | None
    space: dict
    workload: dict
    base: dict
    objectives: list[Objective]
    constraints: list[Constraint]
    trials: list[dict]
    sampler: str = "tpe"
    repeats: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    hardware: dict = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    tuner_version: str = ""
    serving: dict | None = None  # {"traffic", "slo"} when every trial was a serving benchmark

    # -- building ------------------------------------------------------------------------------------

    @classmethod
    def from_study(cls, study, space, workload, objectives, constraints, base, storage, seconds=0.0,
                   sampler="tpe") -> SweepResult:
        from .. import __version__

        trials = []
        for t in study.get_trials(deepcopy=False):
            if t.state.name not in ("COMPLETE", "FAIL", "RUNNING"):
                continue
            cons = t.user_attrs.get("constraints")
            error = t.user_attrs.get("error")
            if t.state.name == "FAIL":
                error = error or "interrupted: its process ended while it ran (failed by the storage's heartbeat)"
            elif t.state.name == "RUNNING":
                error = "running (in another process, or left by a killed one)"
            feasible = t.state.name == "COMPLETE" and cons is not None and all(c <= 0 for c in cons)
            violated = [str(c) for c, v in zip(constraints, cons or [], strict=False) if v > 0]
            trials.append({"number": t.number, "state": t.state.name.lower(), "params": dict(t.params),
                           "values": list(t.values) if t.values is not None else None,
                           "metrics": t.user_attrs.get("metrics", {}), "feasible": feasible,
                           "violated": violated if error is None else [], "error": error,
                           "run_id": t.user_attrs.get("run_id"), "duplicate_of": t.user_attrs.get("duplicate_of"),
                           "seconds": (t.duration.total_seconds() if t.duration else None)})
        return cls(study_name=study.study_name, storage=storage, space=space.to_spec(), workload=workload.to_dict(),
                   base=base, objectives=objectives, constraints=constraints, trials=trials, sampler=sampler,
                   seconds=seconds, tuner_version=__version__, hardware=_hardware(base))

    # -- what it found --------------------------------------------------------------------------------

    @property
    def feasible(self) -> list[dict]:
        return [t for t in self.trials if t["feasible"]]

    @property
    def pareto(self) -> list[dict]:
        return pareto_front(self.trials, self.objectives)

    @property
    def best(self) -> dict[str, dict]:
        """The best feasible trial per objective (keyed 'max:output_tok_s', ...)."""
        out = {}
        for i, o in enumerate(self.objectives):
            ok = [t for t in self.feasible if t.get("duplicate_of") is None]
            if ok:
                pick = max if o.direction == "max" else min
                out[str(o)] = pick(ok, key=lambda t, i=i: t["values"][i])
        return out

    def best_trial(self, objective: str | None = None) -> dict:
        """The best feasible trial for `objective` (default: the first objective)."""
        key = str(parse_objective(objective)) if objective else str(self.objectives[0])
        best = self.best
        if key not in best:
            if not self.feasible:
                raise ValueError(f"no feasible trial in {self.study_name}: every trial broke a constraint or "
                                 f"failed ({len(self.trials)} trials); loosen {', '.join(map(str, self.constraints))} "
                                 "or widen the space")
            raise ValueError(f"{objective!r} is not an objective of this sweep: use one of {', '.join(best)}")
        return best[key]

    def closest(self) -> tuple[dict, list[str]] | None:
        """The measured trial nearest to feasible, and how it missed each constraint it broke ("tpot_ms_p99 was
        146 against <= 130, 12% over"); None when no trial measured anything. Nearness is the sum of the broken
        constraints' relative misses."""
        def misses(t):
            out = []
            for c in self.constraints:
                v = t["metrics"].get(c.metric)
                if c.violation(v) > 0:
                    rel = c.violation(v) / abs(c.bound) if v is not None and c.bound else float("inf")
                    out.append((rel, c, v))
            return out

        measured = [t for t in self.trials if not t.get("error") and t.get("duplicate_of") is None]
        if not measured:
            return None
        best = min(measured, key=lambda t: sum(r for r, _, _ in misses(t)))
        return best, [f"{c.metric} was {fmt.value(c.metric, v)} against {c.op} {fmt.value(c.metric, c.bound)}"
                      + ("" if r == float("inf") else f", {fmt.pct(r)} {'over' if c.op == '<=' else 'under'}"
                         if r < 1 or c.op == ">=" else f", {fmt.num(1 + r)}x the bound")
                      for r, c, v in misses(best)]

    def nothing_feasible(self) -> str:
        """One line for a sweep where no trial met the constraints: the closest trial and by how much it missed."""
        found = self.closest()
        if found is None:
            errors = [t["error"] for t in self.trials if t.get("error")]
            first = f" (first: {errors[0]})" if errors else ""
            return f"no trial was feasible: all {len(self.trials)} failed{first}"
        t, why = found
        return (f"no trial was feasible: the closest, trial {t['number']} {_params(t['params'])}, missed: "
                + "; ".join(why))

    def best_config(self, objective: str | None = None) -> dict:
        """The winning configuration: the base knobs plus the best trial's knobs (registry names, sampler's seed
        written sampling_seed), ready for tuner.export or Engine(**...)."""
        return {**self.base, **self.best_trial(objective)["params"]}

    def frame(self, duplicates: bool = False):
        """One row per trial: its knobs, objective values, headline metrics, feasibility and reason (trials that
        re-proposed a measured point are left out unless duplicates=True)."""
        import pandas as pd

        rows = []
        for t in self.trials:
            if t.get("duplicate_of") is not None and not duplicates:
                continue
            row = {"trial": t["number"], **t["params"]}
            for i, o in enumerate(self.objectives):
                row[o.metric] = t["values"][i] if t["values"] is not None and t["error"] is None else None
            for k, v in t["metrics"].items():
                row.setdefault(k, v)
            row["feasible"] = t["feasible"]
            row["why_not"] = t["error"] or ", ".join(t["violated"]) or ""
            rows.append(row)
        return pd.DataFrame(rows)

    # -- records --------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "study_name": self.study_name, "storage": redact(self.storage),
                "created": self.created, "tuner_version": self.tuner_version, "sampler": self.sampler,
                "space": self.space, "workload": self.workload, "base": self.base,
                "objectives": [str(o) for o in self.objectives], "constraints": [str(c) for c in self.constraints],
                "trials": self.trials, "pareto": [t["number"] for t in self.pareto],
                "best": {k: t["number"] for k, t in self.best.items()}, "repeats": self.repeats,
                "notes": self.notes, "seconds": self.seconds, "hardware": self.hardware, "serving": self.serving}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(_finite(self.to_dict()), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepResult:
        from ..result import check_record

        check_record(d, SCHEMA, "sweep", {"study_name": str, "space": dict, "workload": dict, "objectives": list,
                                          "constraints": list, "trials": list, "created": str})
        for t in d["trials"]:
            check_record(t, None, "sweep trial", {"number": int, "state": str, "params": dict, "metrics": dict})
        return cls(study_name=d["study_name"], storage=d.get("storage"), space=d["space"], workload=d["workload"],
                   base=d.get("base", {}), objectives=[parse_objective(o) for o in d["objectives"]],
                   constraints=[parse_constraint(c) for c in d["constraints"]], trials=d["trials"],
                   sampler=d.get("sampler", "tpe"), repeats=d.get("repeats", []), notes=d.get("notes", []),
                   seconds=d.get("seconds", 0.0), hardware=d.get("hardware", {}), created=d["created"],
                   tuner_version=d.get("tuner_version", ""), serving=d.get("serving"))

    @classmethod
    def load(cls, path: str | Path) -> SweepResult:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json(indent=1))
        return path

    # -- display --------------------------------------------------------------------------------------

    def table(self, limit: int = 20) -> str:
        df = self.frame()
        cols = ["trial", *self.space, *[o.metric for o in self.objectives], "feasible", "why_not"]
        df = df[[c for c in dict.fromkeys(cols) if c in df.columns]]
        return fmt.frame(df.head(limit)).to_string(index=False)

    def summary(self) -> str:
        measured = [t for t in self.trials if t.get("duplicate_of") is None]
        lines = [f"sweep {self.study_name}: {len(measured)} trials, "
                 f"{sum(t['feasible'] for t in measured)} feasible "
                 f"({self.sampler}; {', '.join(map(str, self.objectives))}"
                 + (f"; subject to {', '.join(map(str, self.constraints))}" if self.constraints else "") + ")"]
        for key, t in self.best.items():
            lines.append(f"best {key}: trial {t['number']} {_params(t['params'])} -> "
                         + ", ".join(f"{o.metric}={fmt.value(o.metric, t['values'][i])}"
                                     for i, o in enumerate(self.objectives)))
        if not self.feasible and measured:
            lines.append(self.nothing_feasible())
        elif len(self.objectives) > 1:
            lines.append("Pareto front: " + "; ".join(f"#{t['number']} {_params(t['params'])}" for t in self.pareto))
        tri = self.triangle()
        if tri:
            lines.append("speed / cost / quality (p99 TPOT, $ per 1M output tokens, KL): " + "; ".join(
                f"#{t['number']} {_params(t['params'])} ({fmt.num(t['metrics']['tpot_ms_p99'])} ms, "
                f"{fmt.usd(t['metrics']['usd_per_1m_output_tokens'])}, {fmt.num(t['metrics']['kl_mean'])})"
                for t in tri))
        for r in self.repeats:
            lines.append(f"re-run x{r['repeats']} trial {r['trial']}: " + ", ".join(
                f"{k}={fmt.value(k, v['mean'])} ±{fmt.value(k, v['ci95'])}" for k, v in r["metrics"].items()))
        busy = [t for t in measured if load_busy(t["metrics"])]
        if busy:
            worst = max(t["metrics"].get("others_cpu_share") or 0 for t in busy)
            lines.append(f"warning: {len(busy)} of {len(measured)} trials ran on a busy machine (other processes used "
                         f"up to {fmt.pct(worst)} of the CPUs): their timings are the machine's as much as the "
                         "config's")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        html = [f"<div class='tuner-sweep'><pre>{_esc(self.summary())}</pre>",
                fmt.frame(self.frame()).to_html(index=False)]
        try:
            import base64

            from ..profile.plots import png

            img = base64.b64encode(png(self.plot_pareto())).decode()
            html.append(f"<img src='data:image/png;base64,{img}'/>")
        except (ImportError, ValueError):
            pass
        html.append("</div>")
        return {"text/plain": self.summary(), "text/html": "".join(html), MIME: _finite(self.to_dict())}

    # -- plots ------------------------------------------------------------------------------------------

    def plot_pareto(self, x: str | None = None, y: str | None = None):
        """Trials on two metrics (default: the first two objectives, or the objective against TPOT p99):
        feasible, infeasible and failed trials told apart, the Pareto front joined."""
        from .plots import pareto

        return pareto(self, x, y)

    def triangle(self, speed: str = "tpot_ms_p99", cost: str = "usd_per_1m_output_tokens",
                 quality: str = "kl_mean") -> list[dict]:
        """The feasible trials no other beats on all three corners: speed (default p99 TPOT, what a user waits
        per token), cost ($ per 1M output tokens at the device's price: throughput) and quality (KL against the
        float32 reference). Trials that lack a corner's metric are left out."""
        objs = [Objective(m, METRICS.get(m, "min")) for m in (speed, cost, quality)]
        ok = [t for t in self.trials if t["feasible"] and not t["error"] and t.get("duplicate_of") is None
              and all(t["metrics"].get(o.metric) is not None for o in objs)]
        vals = {id(t): [t["metrics"][o.metric] for o in objs] for t in ok}
        return [t for t in ok if not any(_dominates(vals[id(u)], vals[id(t)], objs) for u in ok if u is not t)]

    def plot_triangle(self, speed: str = "tpot_ms_p99", cost: str = "usd_per_1m_output_tokens",
                      quality: str = "kl_mean"):
        """Speed against cost for every trial, coloured by quality; the three-way Pareto set ringed and named."""
        from .plots import triangle

        return triangle(self, speed, cost, quality)

    def plot_effects(self, metric: str | None = None):
        """The objective against each knob's values (one panel per knob)."""
        from .plots import effects

        return effects(self, metric)

    def plot_parallel(self):
        """Parallel coordinates: each trial a line across the knobs and the objectives."""
        from .plots import parallel

        return parallel(self)


def _params(p: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in p.items())


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def redact(url: str | None) -> str | None:
    """A storage URL without its password."""
    if url and "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url


def _finite(x):
    """JSON without NaN or infinity (they are not JSON): None instead."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _hardware(base: dict) -> dict:
    from ..profile.hardware import device_facts

    try:
        import torch

        return device_facts(torch.device(str(base.get("device", "cpu"))))
    except Exception:  # noqa: BLE001 - provenance only
        return {}
