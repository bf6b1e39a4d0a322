"""`tuner demo`: the whole loop on a CPU in a few minutes.

smollm2-135m's shapes with dummy weights; a sweep over batch size, weight quantization and KV-cache layout
that maximizes output tokens/s and minimizes p99 TPOT under a TPOT SLO (by default twice this machine's own
batch-1 TPOT, measured first, since a fixed number means nothing across machines); then the table, the Pareto front,
and a folder with an HTML report, every run's record, the sweep's record and the winner exported in every
format.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .export import export_all
from .report import write_report
from .sweep import sweep

SPACE = {"batch_size": [1, 2, 4, 8], "quant": ["none", "int8", "int4"], "kv_cache": ["contiguous", "paged"]}
OBJECTIVES = ["max:output_tok_s", "min:tpot_ms_p99"]


SLO_FACTOR = 2.0  # the default SLO: this many times the p99 TPOT of the simplest configuration, measured here


def baseline_tpot_ms(base: dict, workload: dict) -> float:
    """p99 TPOT of the simplest configuration (batch 1, float weights, contiguous cache) on this machine now."""
    from ..engine.engine import Engine
    from ..engine.workload import Workload

    engine = Engine(**base)
    engine.warmup()
    return engine.generate(Workload(batch=1, **workload)).metrics["tpot_ms_p99"]


def _earlier_slo(storage: str) -> float | None:
    """The SLO bound of the demo study already in `storage`, so a resumed demo judges every trial alike."""
    import optuna

    from .space import parse_constraint

    try:
        attrs = optuna.load_study(study_name="tuner-demo", storage=storage).user_attrs.get("tuner_sweep", {})
    except KeyError:  # no such study yet
        return None
    constraints = attrs.get("constraints") or []
    return parse_constraint(constraints[0]).bound if constraints else None


def run_demo(out: str | Path = "tuner-demo", n_trials: int = 12, tpot_slo_ms: float | None = None,
             fresh: bool = False,
             model: str = "smollm2-135m", prompt_len: int = 64, output_len: int = 32, device: str = "cpu",
             progress: bool = True):
    """The sweep under `tpot_slo_ms` (None: SLO_FACTOR x this machine's baseline_tpot_ms); returns the result,
    the report's path and the exported files."""
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    base = {"model": model, "device": device, "max_seq_len": prompt_len + output_len, "group_size": 64}
    workload = {"prompt_len": prompt_len, "output_len": output_len}
    storage = f"sqlite:///{(out / 'sweeps.db').resolve()}"
    note = None
    if tpot_slo_ms is None and (earlier := _earlier_slo(storage)) is not None:
        tpot_slo_ms, note = earlier, "SLO of the earlier demo in this folder, which this run resumes"
    if tpot_slo_ms is None:
        baseline = baseline_tpot_ms(base, workload)
        tpot_slo_ms = float(f"{SLO_FACTOR * baseline:.3g}")
        note = (f"SLO relative to this machine: {SLO_FACTOR:g}x the p99 TPOT of batch 1 with float weights, "
                f"measured here first ({baseline:.3g} ms)")
    result = sweep(SPACE, workload=workload, objectives=OBJECTIVES,
                   constraints=[f"tpot_ms_p99 <= {tpot_slo_ms:g}"], n_trials=n_trials, sampler="tpe",
                   storage=storage, study_name="tuner-demo",
                   base=base, runs_dir=out, progress=progress)
    if note:
        result.notes.append(note)
    exports = export_all(result, out / "exports") if result.feasible else {}
    report = write_report(result, out / "report.html", exports, out / "sweeps" / result.study_name)
    return result, report, exports
