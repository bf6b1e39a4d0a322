"""The notebook session: the current engine, the runs so far, and where their records go.

Runtime knobs (batch size, cache layout, sampling, workload) reuse the loaded weights; a knob that
shapes the weights (model, weights, device, dtype, quant, group_size, seed) reloads them. Every run's
record (tuner.run/1 JSON) is written to `runs_dir` as soon as it finishes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..actions import parse_knobs, run
from ..compare import Comparison

__all__ = ["Session", "compare", "parse_knobs"]


class Session:
    """What `%tuner` works on: one engine at a time and the history of runs."""

    def __init__(self, runs_dir: str | Path = "tuner-runs"):
        self.runs_dir = Path(runs_dir)
        self.engine = None
        self.history: list = []  # RunResult, oldest first
        self.sweeps: list = []  # SweepResult, oldest first
        self.serves: list = []  # ServeResult, oldest first

    def load(self, progress: Callable[[int, int], None] | None = None, **knobs):
        """Load (or reconfigure) the engine with these engine knobs; returns it."""
        from ..engine.engine import Engine

        if self.engine is None:
            self.engine = Engine(progress=progress, **knobs)
        elif knobs:
            self.engine = self.engine.replace(progress=progress, **knobs)
        return self.engine

    def run(self, engine_knobs: dict | None = None, sampling_knobs: dict | None = None,
            workload: dict | None = None, profile: bool | str = False, prompts: list[str] | None = None,
            on_step: Callable[[dict], bool | None] | None = None, progress=None):
        """Apply the knobs, generate (tuner.actions.run), store the record; returns the RunResult."""
        from ..profile.capture import profile_extras

        profile_extras(profile)  # a misspelt extra is refused before a model loads
        engine = self.load(progress=progress, **(engine_knobs or {}))
        result = run(engine, sampling_knobs, workload, prompts, profile, on_step)
        self.record(result)
        return result

    def record(self, result) -> Path:
        self.history.append(result)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        path = self.runs_dir / f"{result.run_id}.json"
        path.write_text(result.to_json(indent=1))
        return path

    def serve(self, engine_knobs: dict | None = None, traffic=None, slo: dict | None = None,
              on_step: Callable[[dict], bool | None] | None = None, progress=None):
        """Apply the engine knobs, serve `traffic` under `slo` (tuner.serve_bench), keep the record; returns the
        ServeResult."""
        from ..serve.bench import serve_bench

        engine = self.load(progress=progress, **(engine_knobs or {}))
        result = serve_bench(engine, traffic, slo, on_step=on_step)
        self.record_serve(result)
        return result

    def record_serve(self, result) -> Path:
        """Keep a serving benchmark's record and write it (tuner.serve/1) to runs_dir/serve/."""
        self.serves.append(result)
        return result.save(self.runs_dir / "serve" / f"{result.run_id}.json")

    def get(self, ref: str):
        """A run by id (or a unique prefix of one) or by history index (-1 is the latest)."""
        if not self.history:
            raise ValueError("no runs yet: %tuner run first")
        try:
            i = int(ref)
        except ValueError:
            hits = [r for r in self.history if r.run_id.startswith(ref)]
            if len(hits) != 1:
                raise ValueError(f"{ref!r} matches {len(hits)} runs: use a run id from %tuner history "
                                 "or an index like -1") from None
            return hits[0]
        if not -len(self.history) <= i < len(self.history):
            raise ValueError(f"run index {i} is out of range: {len(self.history)} runs so far")
        return self.history[i]

    def history_frame(self):
        """One row per run: what changed and what it measured."""
        import pandas as pd

        rows = []
        for i, r in enumerate(self.history):
            c, m = r.config, r.metrics
            rows.append({"#": i, "run_id": r.run_id, "model": c["model"], "batch": c["batch_size"],
                         "quant": c["quant"], "kv": f"{c['kv_cache']}/{c['kv_dtype']}", "backend": c["backend"],
                         "prompt": round(r.workload.get("prompt_len_mean", 0)), "ttft_ms": m.get("ttft_ms"),
                         "tpot_ms": m.get("tpot_ms"), "tok_s": m.get("output_tok_s"), "mbu": m.get("mbu"),
                         "stopped": r.stopped})
        return pd.DataFrame(rows)


def compare(*runs):
    """Runs side by side (tuner.compare.Comparison): headed columns A, B, ... and their ratios to A, the op-by-op
    change, and overlaid step latency and roofline charts."""
    return Comparison(runs)
