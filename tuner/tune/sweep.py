"""`tuner.sweep`: search the knobs for the best configuration under latency SLOs, on Optuna.

Each trial is one real run of the engine (weights are reused while model, dtype and quantization stay);
its record is written when it finishes. SLOs are Optuna constraints, so a trial that breaks one is
infeasible rather than best; a trial that fails (out of memory, an impossible combination) is recorded
as a completed infeasible trial with its reason, so the samplers learn where the failures lie and the
sweep goes on. Studies live in an Optuna storage (SQLite by default, PostgreSQL to share one study
between processes or machines): calling sweep() again with the same study name and storage resumes it.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..knobs import short_repr
from .result import SweepResult, pareto_front, redact
from .space import QUALITY_METRICS, Constraint, Objective, Space, _knob, parse_constraint, parse_objective
from .workers import POLL_S, CtrlC, claim, fail_interrupted, rdb_storage, worker_id

if TYPE_CHECKING:
    from ..engine.workload import Workload

SAMPLERS = ("tpe", "grid", "random", "nsga2")
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # it names a file and a folder: no path in it
DEFAULT_STORAGE = "sqlite:///tuner-runs/sweeps.db"
# what every trial keeps from its run record, besides the objectives' and constraints' metrics
HEADLINE = ("ttft_ms", "ttft_ms_p99", "tpot_ms", "tpot_ms_p99", "itl_ms_p99", "e2e_ms_p99", "output_tok_s", "mbu",
            "usd_per_1m_output_tokens", "goodput_req_s", "slo_attainment")
_WORST = {"max": 0.0, "min": 1e12}  # placeholder objective values of a failed trial (it is infeasible anyway)


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep, after its record was written with every finished trial."""


class Runner:
    """Runs one configuration: the engine (reused across trials where the weights allow), the workload,
    and the run record written to `runs_dir`."""

    def __init__(self, base: dict[str, Any], workload: Workload, runs_dir: Path, warmup: bool = True,
                 quality: Callable | None = None, traffic=None, slo: dict | None = None,
                 capacity: bool = False):
        self.base_engine, self.base_sampling = {}, {}
        for name, value in (base or {}).items():
            group, reg, knob = _knob(name)
            (self.base_engine if group == "engine" else self.base_sampling)[reg] = knob.check(
                knob.parse(value) if isinstance(value, str) and knob.type is not str else value)
        self.workload, self.runs_dir, self.warmup, self.quality = workload, runs_dir, warmup, quality
        self.traffic, self.slo, self.capacity = traffic, slo or {}, capacity  # serving trials (tuner/serve)
        self.engine = None
        self.hardware: dict = {}

    def engine_for(self, engine_knobs: dict):
        from ..engine.engine import Engine

        knobs = {**self.base_engine, **engine_knobs}
        if self.engine is None:
            self.engine = Engine(**knobs)
        else:
            if self.engine.asked.replace(**knobs) != self.engine.asked:  # as asked: backend='auto' unresolved
                self.engine = self.engine.replace(**knobs)
        return self.engine

    def run(self, engine_knobs: dict, sampling_knobs: dict):
        """(RunResult, metrics with quality figures added) of one configuration."""
        from ..config import SamplingParams

        engine = self.engine_for(engine_knobs)
        sampling = SamplingParams(**{**self.base_sampling, **sampling_knobs,
                                     "max_new_tokens": self.workload.output_len})
        if self.warmup:
            engine.warmup()
        if self.traffic is not None:  # a serving trial: the traffic through the scheduler, against the SLO
            from ..serve.bench import capacity, serve_bench

            result = serve_bench(engine, self.traffic, self.slo, sampling, warmup=False)
            metrics = dict(result.metrics)
            if self.capacity:
                metrics["capacity_req_s"] = capacity(engine, self.traffic, self.slo, sampling=sampling,
                                                     duration_s=20).capacity_req_s or 0.0
        else:
            result = engine.generate(self.workload, sampling)
            metrics = dict(result.metrics)
        self.hardware = result.hardware
        for key in ("others_cpu_share", "steal_share"):  # how busy the machine was: the summary warns
            metrics[key] = result.machine_load.get(key)
        if self.quality is not None:
            metrics.update(self.quality(engine))
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        (self.runs_dir / f"{result.run_id}.json").write_text(json.dumps(result.to_dict(), indent=1))
        return result, metrics

    def release(self) -> None:
        self.engine = None
        _free()


def _free() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


def _workload(w: Workload | dict | None) -> Workload:
    from ..engine.workload import Workload

    if w is None:
        return Workload()
    if isinstance(w, Workload):
        return w
    if isinstance(w, dict):
        allowed = {"batch", "prompt_len", "output_len", "seed"}
        if set(w) - allowed:
            raise ValueError(f"workload keys {sorted(set(w) - allowed)} are unknown: use {sorted(allowed)}")
        return Workload(**w)
    raise ValueError("workload must be a tuner.Workload or a dict of batch, prompt_len, output_len, seed")


def default_study_name(space: Space, workload: Workload, objectives, constraints, base: dict,
                       serving: dict | None = None) -> str:
    """The same sweep asked again gets the same name, so it resumes."""
    spec = {"space": space.to_spec(), "workload": workload.to_dict(), "base": base,
            "objectives": [str(o) for o in objectives], "constraints": [str(c) for c in constraints]}
    if serving:
        spec["serving"] = serving
    key = json.dumps(spec, sort_keys=True, default=str)
    return "tuner-" + hashlib.sha1(key.encode()).hexdigest()[:10]


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(16)


CONNECT_TIMEOUT_S = 10  # a database server that accepts and never answers is given up on after this
SQLITE_BUSY_S = 60  # how long a SQLite write waits for another connection's lock


def _storage(url: str | None):
    """The Optuna storage at `url`; ValueError in one line for a URL that is not a database, a SQLite folder that
    does not exist (the default's is made), a file that is not SQLite, a missing driver or a server that does not
    answer within CONNECT_TIMEOUT_S."""
    import optuna
    from sqlalchemy.engine import make_url

    if url is None:
        return None
    shown = redact(url) if isinstance(url, str) else url
    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - sqlalchemy's ArgumentError, or a value that is no string
        raise ValueError(f"storage={shown!r} is not a database URL: use sqlite:///PATH.db, or "
                         "postgresql://USER:PASSWORD@HOST/DB to share a study") from None
    kwargs = {}
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database).expanduser()
        if url == DEFAULT_STORAGE:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.parent.is_dir():
            raise ValueError(f"storage={shown!r}: the folder {path.parent} does not exist")
        if path.is_dir() or (path.is_file() and path.stat().st_size and _head(path) != b"SQLite format 3\0"):
            raise ValueError(f"storage={shown!r}: {path} is not a SQLite database")
        # workers and the heartbeat thread write to one file: wait for its lock rather than fail after 5 s
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_BUSY_S}}
    elif parsed.get_backend_name() == "postgresql":
        kwargs["engine_kwargs"] = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    # heartbeats let a later run (or another worker) fail the trial a killed process left RUNNING
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return rdb_storage(url, heartbeat_interval=10, grace_period=30, **kwargs)
    except Exception as e:  # noqa: BLE001 - sqlalchemy's and the drivers' errors, one line each
        if _creation_race(e):  # workers starting together on an empty database: _open_study retries
            raise
        cause = e.__cause__ or e.__context__ or e
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
        raise ValueError(f"storage={shown!r} cannot be opened ({type(cause).__name__}: {first}); for a server, "
                         f"it was given {CONNECT_TIMEOUT_S} s to answer") from None


def _new_constraints_api() -> bool:
    """Optuna 5 takes constraints per trial (Trial.set_constraint); Optuna 4 through samplers' constraints_func."""
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


def _constrain(trial, values: list[float]) -> None:
    """Record a trial's constraint values (> 0 violates): for Optuna, and as a user attribute for tuner."""
    trial.set_user_attr("constraints", values)
    if _new_constraints_api():
        for i, v in enumerate(values):
            trial.set_constraint(f"c{i}", v)


def _sampler(name: str, space: Space, n_constraints: int, seed: int | None):
    import optuna

    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is not allowed: use one of {', '.join(SAMPLERS)}")

    def from_attrs(trial) -> Sequence[float]:
        return trial.user_attrs.get("constraints", [1.0] * (n_constraints + 1))

    constraints = None if _new_constraints_api() else from_attrs

    if name == "grid":
        return _grid_sampler(space.grid(), seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints)
    return optuna.samplers.TPESampler(seed=seed, constraints_func=constraints, constant_liar=True,
                                      n_startup_trials=min(10, max(4, len(space.dims) * 2)))


def _grid_sampler(grid: dict[str, list], seed: int | None):
    """Optuna's grid sampler, except that a point whose trial FAILed is not done: it runs again.

    tuner records every error of a run as a COMPLETE infeasible trial, so a FAIL trial is one whose process
    died (the storage's heartbeat failed it, or a later run did). Optuna's grid counts it as visited, so a
    sweep resumed after a kill never measured that point once the heartbeat had failed it, and still stopped
    as if the grid were covered (found by test_a_killed_sweep_resumes_with_every_finished_trial on a busy
    machine, where resuming took longer than the heartbeat's grace period)."""
    import optuna

    class Grid(optuna.samplers.GridSampler):
        def _get_unvisited_grid_ids(self, study) -> list[int]:
            done, running = set(), set()
            for t in study.get_trials(deepcopy=False):
                if "grid_id" not in t.system_attrs or not self._same_search_space(t.system_attrs["search_space"]):
                    continue
                if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
                    done.add(t.system_attrs["grid_id"])
                elif t.state == optuna.trial.TrialState.RUNNING:
                    running.add(t.system_attrs["grid_id"])
            todo = set(range(len(self._all_grids))) - done
            return sorted(todo - running) or sorted(todo)  # points in flight elsewhere go last, not never

    return Grid(grid, seed=seed)


def sweep(space: dict | str | Path | Space, workload: Workload | dict | None = None,
          objectives: Sequence[str] | str = ("max:output_tok_s",), constraints: Sequence[str] | str = (),
          n_trials: int | None = None, sampler: str = "tpe", storage: str | None = DEFAULT_STORAGE,
          study_name: str | None = None, repeats: int = 0, top_k: int = 3, base: dict | None = None,
          seed: int | None = 0, runs_dir: str | Path = "tuner-runs", warmup: bool = True,
          quality_prompts: int = 4, quality_text: str | Path | None = None, measure_quality: bool | None = None,
          progress: bool = True, timeout_s: float | None = None, traffic=None, slo: dict | None = None) -> SweepResult:
    """Search `space` (knob -> values) for the best configurations on `workload`.

    objectives: metrics to optimize ("max:output_tok_s", "min:tpot_ms_p99"; several give a Pareto front).
    constraints: SLOs ("ttft_ms_p99 <= 200", "kl_mean <= 0.01"); a trial that breaks one is infeasible.
    n_trials: completed trials the study should hold (the grid's size for sampler="grid"); counted over every
        process that shares the study, so a resumed sweep runs only the rest.
    sampler: "tpe" (default), "grid", "random" or "nsga2".
    storage / study_name: where the study lives (None: in memory, no resume). The default name is derived
        from the sweep's arguments, so calling again resumes.
    repeats: re-run each of the top_k feasible configurations this many times, with 95% confidence intervals.
    base: knobs every trial shares (model, device, dtype, ...), e.g. {"model": "smollm2-135m"}.
    quality_prompts / quality_text: when an objective or constraint names a quality metric (kl_mean, kl_p99,
        top1_agreement, perplexity, greedy_match: tune/quality.py), the windows of 128 tokens of text (a file;
        default: the standard library's documentation strings) each trial is scored on against the float32
        reference, through the KV cache.
    measure_quality: score every trial's quality (None: when an objective or constraint names a quality metric,
        or the model has real weights, so the sweep shows the speed / cost / quality triangle).
    traffic / slo: make every trial a serving benchmark (tuner.serve_bench) of this traffic (a tuner.Traffic or
        a dict of its fields) under these per-request limits ({"ttft_ms": 500, "tpot_ms": 50}) instead of a
        static run of `workload`: objectives and constraints then read its metrics (goodput_req_s,
        slo_attainment, ttft_ms_p99, ...); the objective capacity_req_s runs tuner.capacity per trial.
    """
    import optuna

    space = space if isinstance(space, Space) else Space(space)
    workload = _workload(workload)
    objectives = [parse_objective(o) for o in ([objectives] if isinstance(objectives, str) else objectives)]
    constraints = [parse_constraint(c) for c in ([constraints] if isinstance(constraints, str) else constraints)]
    if not objectives:
        raise ValueError("give at least one objective, e.g. 'max:output_tok_s'")
    for name, value, low in (("repeats", repeats, 0), ("top_k", top_k, 1), ("n_trials", n_trials, 1),
                             ("seed", seed, 0), ("quality_prompts", quality_prompts, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"{name}={short_repr(value)} is not allowed: {name} must be a whole number >= {low}")
    base = dict(base or {})
    if n_trials is None:
        n_trials = space.size() if sampler == "grid" else 20
    if n_trials is None:
        raise ValueError("n_trials is needed: a space with ranges has no size to take it from")
    serving = None
    if traffic is not None or slo is not None:
        from ..serve.metrics import check_slo
        from ..serve.traffic import Traffic

        traffic, slo = Traffic.of(traffic), check_slo(slo)
        serving = {"traffic": traffic.to_dict(), "slo": slo}
    wants_capacity = any(o.metric == "capacity_req_s" for o in [*objectives, *constraints])
    if wants_capacity and not (serving and serving["slo"]):
        raise ValueError("capacity_req_s needs traffic and an slo: the highest rate meeting the SLO is measured by "
                         "serving that traffic")
    serving_only = {"goodput_req_s", "slo_attainment", "request_throughput", "queue_ms", "queue_ms_p99",
                    "capacity_req_s"}
    if serving is None and any(o.metric in serving_only for o in [*objectives, *constraints]):
        raise ValueError("goodput_req_s, slo_attainment, request_throughput, queue_ms and capacity_req_s are serving "
                         "metrics: give the sweep traffic (and an slo)")
    study_name = study_name or default_study_name(space, workload, objectives, constraints, base, serving)
    if not isinstance(study_name, str) or not STUDY_NAME.fullmatch(study_name):
        raise ValueError(f"study_name={short_repr(study_name)} is not allowed: it names files under "
                         f"{Path(runs_dir) / 'sweeps'}, so use 1-128 letters, digits, '.', '_' or '-', starting "
                         "with a letter or digit")
    runs_dir = Path(runs_dir)
    named = any(o.metric in QUALITY_METRICS for o in [*objectives, *constraints])
    if measure_quality not in (None, True, False):
        raise ValueError(f"measure_quality={short_repr(measure_quality)} is not allowed: use true, false or leave it "
                         "out")
    needs_quality = named or measure_quality or (measure_quality is None and _real_weights(base))

    quality = None
    runner = Runner(base, workload, runs_dir / "sweeps" / study_name, warmup, traffic=traffic, slo=slo,
                    capacity=wants_capacity)
    if needs_quality:
        from .quality import Quality

        quality = Quality(quality_prompts, text=quality_text)
        runner.quality = quality

    # errors: every failure of a run is a recorded trial already (an interrupt would only add Optuna's traceback)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = _open_study(storage, study_name, [o.optuna_direction for o in objectives],
                        _sampler(sampler, space, len(constraints), seed))
    fail_interrupted(study)  # trials a killed process of this machine left RUNNING
    study.set_user_attr("tuner_sweep", {"space": space.to_spec(), "workload": workload.to_dict(), "base": base,
                                        "objectives": [str(o) for o in objectives],
                                        "constraints": [str(c) for c in constraints], "serving": serving})

    def n_complete() -> int:
        """Completed trials that measured something (a re-proposed point reuses a measurement, uncounted)."""
        return sum("duplicate_of" not in t.user_attrs
                   for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))

    size = space.size()
    target = min(n_trials, size) if size else n_trials

    done_before = n_complete()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=target, initial=min(done_before, target), desc=f"sweep {study_name}", unit="trial")

    ctrl_c = CtrlC()

    def objective(trial: optuna.Trial) -> list[float]:
        ctrl_c.check()
        trial.set_user_attr("worker", worker_id())  # first, so a later run can tell whether this process died
        params = {d.name: d.suggest(trial) for d in space.dims}
        # TPE re-proposes points on small categorical spaces, and workers sharing the study can propose the same
        # point at once: reuse a finished measurement, or the one another worker is making
        twin = _same_params(study, params) or claim(study, trial, params,
                                                    wait=lambda: ctrl_c.run(time.sleep, POLL_S))
        if twin is not None:
            for k, v in twin.user_attrs.items():
                if k not in ("constraints", "worker"):
                    trial.set_user_attr(k, v)
            trial.set_user_attr("duplicate_of", twin.number)
            _constrain(trial, twin.user_attrs["constraints"])
            return list(twin.values)
        return _evaluate(trial, params, space, runner, objectives, constraints, ctrl_c.run)

    def tick(study_, trial) -> None:
        ctrl_c.check()
        if n_complete() >= target:  # counted over every process sharing the study
            study_.stop()
        if bar is not None:
            bar.n = min(n_complete(), target)
            front = study_.best_trials if trial.state.name == "COMPLETE" else []
            if front:
                bar.set_postfix_str(", ".join(f"{o.metric}={front[0].values[i]:.4g}" for i, o in enumerate(objectives)))
            bar.refresh()

    remaining = target - done_before
    t0 = time.time()
    interrupted = False
    if remaining > 0:
        # re-proposed points cost no run but take an attempt: allow a few per trial still to run
        try:
            with ctrl_c:
                study.optimize(objective, n_trials=4 * remaining + 8, callbacks=[tick], timeout=timeout_s,
                               catch=(Exception,))
        except KeyboardInterrupt:  # Ctrl-C: keep what finished; the cut trial is FAILed and runs again on resume
            interrupted = True
    if bar is not None:
        bar.close()
    result = SweepResult.from_study(study, space, workload, objectives, constraints, base, storage,
                                    seconds=time.time() - t0, sampler=sampler)
    if interrupted:
        record = result.save(runs_dir / "sweeps" / f"{study_name}.json")
        runner.release()
        raise SweepInterrupted(f"{sum(t['state'] == 'complete' for t in result.trials)} finished trials are in "
                               f"{record}; run the sweep again to resume it")
    if runner.hardware:
        result.hardware = runner.hardware
    result.serving = serving
    if quality is not None and quality.dummy:
        result.notes.append("dummy weights: the quality figures (kl_mean, top1_agreement, ...) compare random "
                            "models and say nothing about the quality of a real one")
    if repeats:
        result.repeats = _repeat(result, runner, space, objectives, constraints, repeats, top_k)
    runner.release()
    if quality is not None:
        quality.release()
    result.save(runs_dir / "sweeps" / f"{study_name}.json")
    return result


def _real_weights(base: dict) -> bool:
    """Whether trials of `base` load real weights (a checkpoint on this machine, weights not 'dummy')."""
    from ..knobs import ENGINE_KNOBS
    from ..models.args import resolve_model

    if base.get("weights", "auto") == "dummy":
        return False
    try:
        return resolve_model(base.get("model", ENGINE_KNOBS["model"].default))[1] is not None
    except ValueError:
        return False


def _open_study(storage: str | None, study_name: str, directions: list[str], sampler):
    """Create or load the study. Workers started together on an empty database race to create Optuna's
    tables (and the study): the loser retries and loads what the winner made."""
    import optuna

    for attempt in range(6):
        try:
            return optuna.create_study(study_name=study_name, storage=_storage(storage), load_if_exists=True,
                                       directions=directions, sampler=sampler)
        except Exception as e:  # noqa: BLE001 - only the creation race is retried
            if not _creation_race(e) or attempt == 5:
                raise
            time.sleep(0.3 * (attempt + 1))
    raise AssertionError("unreachable")


def _creation_race(e: BaseException) -> bool:
    """Whether `e` is another worker having created the same tables or study a moment earlier."""
    return (type(e).__name__ in ("IntegrityError", "UniqueViolation", "DuplicatedStudyError")
            or "already exists" in str(e) or "duplicate key" in str(e))


def _same_params(study, params: dict):
    import optuna

    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        if t.params == params and "duplicate_of" not in t.user_attrs:
            return t
    return None


def _evaluate(trial, params: dict, space: Space, runner: Runner, objectives: list[Objective],
              constraints: list[Constraint], guard=lambda fn, *a: fn(*a)) -> list[float]:
    """One trial: run (through `guard`, where Ctrl-C may land), then hand Optuna its objective values; store
    metrics, constraint values and the run."""
    engine_knobs, sampling_knobs = space.split(params)
    try:
        result, metrics = guard(runner.run, engine_knobs, sampling_knobs)
    except Exception as e:  # noqa: BLE001 - an OOM or a refused combination is an infeasible trial, not a crash
        reason = f"{type(e).__name__}: {e}".splitlines()[0][:400]
        if _is_oom(e):
            reason = "out of memory: " + reason
        runner.engine = None  # a half-built engine may hold memory
        _free()
        trial.set_user_attr("error", reason)
        _constrain(trial, [1.0] * (len(constraints) + 1))
        return [_WORST[o.direction] for o in objectives]
    keep = {*HEADLINE, *(k for k in QUALITY_METRICS if k in metrics)} | {o.metric for o in objectives} | {
        c.metric for c in constraints}
    trial.set_user_attr("metrics", {k: metrics.get(k) for k in sorted(keep)})
    trial.set_user_attr("run_id", result.run_id)
    missing = [o.metric for o in objectives if metrics.get(o.metric) is None]
    if missing:
        trial.set_user_attr("error", f"the run has no {', '.join(missing)} (output_len 1 has no TPOT)")
        _constrain(trial, [1.0] * (len(constraints) + 1))
        return [_WORST[o.direction] for o in objectives]
    _constrain(trial, [c.violation(metrics.get(c.metric)) for c in constraints] + [0.0])
    return [float(metrics[o.metric]) for o in objectives]


def _is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return type(e).__name__ == "OutOfMemoryError" or isinstance(e, MemoryError) or (
        "out of memory" in text or "can't allocate memory" in text or "not enough memory" in text)


def _repeat(result: SweepResult, runner: Runner, space: Space, objectives, constraints, repeats: int,
            top_k: int) -> list[dict]:
    """Re-run the top feasible configurations; mean, standard deviation and a 95% interval per metric."""
    front = pareto_front(result.trials, objectives)
    front.sort(key=lambda t: -t["values"][0] if objectives[0].direction == "max" else t["values"][0])
    out = []
    metrics = list(dict.fromkeys([o.metric for o in objectives] + [c.metric for c in constraints]))
    for t in front[:top_k]:
        engine_knobs, sampling_knobs = space.split(t["params"])
        samples: dict[str, list[float]] = {m: [] for m in metrics}
        for _ in range(repeats):
            _, m = runner.run(engine_knobs, sampling_knobs)
            for k in metrics:
                if m.get(k) is not None:
                    samples[k].append(float(m[k]))
        out.append({"trial": t["number"], "params": t["params"], "repeats": repeats,
                    "metrics": {k: _ci(v) for k, v in samples.items() if v}})
    return out


def _ci(xs: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation and the half-width of a 95% Student-t interval."""
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return {"mean": mean, "std": 0.0, "ci95": float("nan"), "n": n}
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}.get(n, 1.96)
    return {"mean": mean, "std": std, "ci95": t * std / math.sqrt(n), "n": n}


SPEC_KEYS = ("space", "base", "workload", "objectives", "constraints", "n_trials", "sampler", "storage",
             "study_name", "repeats", "top_k", "seed", "quality_prompts", "quality_text", "measure_quality",
             "traffic", "slo")


def sweep_spec(source: dict | str | Path) -> dict:
    """A sweep described in one YAML document (what `tuner sweep FILE` and `%%tuner sweep` read):

        space: {batch_size: [1, 4, 8], quant: [none, int8]}
        base: {model: smollm2-135m}
        workload: {prompt_len: 128, output_len: 64}
        objectives: [max:output_tok_s]
        constraints: ["tpot_ms_p99 <= 50"]
        n_trials: 12

    A document without a `space` key is the space itself. Returns sweep()'s keyword arguments."""
    from ..config import read_yaml

    doc = read_yaml(source, "sweep") if isinstance(source, (str, Path)) else source
    if not isinstance(doc, dict) or not doc:
        raise ValueError("a sweep file is a YAML mapping: either knob: [values] entries, or the sections "
                         f"{', '.join(SPEC_KEYS)}")
    if "space" not in doc:
        return {"space": doc}
    unknown = set(doc) - set(SPEC_KEYS)
    if unknown:
        raise ValueError(f"unknown sweep section(s) {sorted(unknown)}: sections are {', '.join(SPEC_KEYS)}")
    return dict(doc)


def sweep_from_spec(source: dict | str | Path, overrides: dict | None = None, base: dict | None = None,
                    base_defaults: dict | None = None, **kw) -> SweepResult:
    """What `tuner sweep FILE` and `%%tuner sweep` run: the sweep a document describes (sweep_spec), with the
    front end's flags laid over it. overrides: sweep() arguments (objectives, n_trials, ...; None values are
    not given); base: knobs that replace the document's; base_defaults: knobs that fill only what it leaves out.
    The rest of **kw goes to sweep() (runs_dir, progress, ...)."""
    spec = sweep_spec(source)
    spec.update({k: v for k, v in (overrides or {}).items() if v is not None})
    spec["base"] = {**(base_defaults or {}), **(spec.get("base") or {}),
                    **{k: v for k, v in (base or {}).items() if v is not None}}
    return sweep(**spec, **kw)
