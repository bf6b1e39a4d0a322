"""`tuner demo`: the whole loop on a CPU in a few minutes.

smollm2-135m's shapes with dummy weights; a sweep over batch size, weight quantization and KV-cache layout
that maximizes output tokens/s and minimizes p99 TPOT under a TPOT SLO; then the table, the Pareto front,
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


def run_demo(out: str | Path = "tuner-demo", n_trials: int = 12, tpot_slo_ms: float = 20.0,
             fresh: bool = False,
             model: str = "smollm2-135m", prompt_len: int = 64, output_len: int = 32, device: str = "cpu",
             progress: bool = True):
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    result = sweep(SPACE, workload={"prompt_len": prompt_len, "output_len": output_len}, objectives=OBJECTIVES,
                   constraints=[f"tpot_ms_p99 <= {tpot_slo_ms:g}"], n_trials=n_trials, sampler="tpe",
                   storage=f"sqlite:///{(out / 'sweeps.db').resolve()}", study_name="tuner-demo",
                   base={"model": model, "device": device, "max_seq_len": prompt_len + output_len, "group_size": 64},
                   runs_dir=out, progress=progress)
    exports = export_all(result, out / "exports") if result.feasible else {}
    report = write_report(result, out / "report.html", exports, out / "sweeps" / result.study_name)
    return result, report, exports
