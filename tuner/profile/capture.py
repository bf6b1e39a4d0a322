"""Capture and explain a profiled run: torch.profiler over generate(), each op's time per phase, the
analytic FLOPs and bytes of the same ops, the roofline verdict, and the traces on disk.

Every engine op runs inside a named range (tuner.profile.ranges.op), and every prefill and decode step
inside a "prefill" / "decode" range. An op's time is its range's CPU time on CPU and the device time of
the kernels launched inside it on a GPU (CuPy kernels included: they are attributed to the range they
were launched in). The op's FLOPs and bytes come from tuner.profile.cost for the steps the engine ran.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import time
import uuid
from pathlib import Path

import torch

from ..ranges import recording
from .cost import FUSED, OPS, Precision, range_costs, step_costs
from .hardware import cache_dir

PHASES = ("prefill", "decode")
# what torch.profiler may record beside the op times, each off unless asked for (each slows the run and grows
# the trace): tuner's name -> torch.profiler.profile's argument
EXTRAS = {"shapes": "record_shapes", "memory": "profile_memory", "stack": "with_stack"}
CATEGORY = "tuner"  # the Chrome/Perfetto trace category of tuner's own ranges (ops and phases), apart from aten's


def profile_extras(profile) -> tuple[str, ...]:
    """The EXTRAS a `profile` argument asks for: True (none), a comma-separated string ("shapes,stack") or an
    iterable of names. ValueError naming the allowed ones for anything else."""
    if profile is True or profile is False or profile is None:
        return ()
    names = [x.strip() for x in profile.split(",")] if isinstance(profile, str) else list(profile)
    bad = [n for n in names if n not in EXTRAS]
    if bad:
        raise ValueError(f"profile extra {bad[0]!r} is not allowed: use any of {', '.join(EXTRAS)} "
                         "(comma-separated), or profile=True for op times alone")
    return tuple(dict.fromkeys(n for n in names if n))


def _record_every_step(step: int):
    """A profiler schedule that records every step: unlike no schedule, it makes torch.profiler mark each
    prof.step() as a ProfilerStep#N range, which TensorBoard's overview lists as steps."""
    return torch.profiler.ProfilerAction.RECORD
BOUND_PCT = 0.30  # below this share of both measured peaks an op is overhead-bound
LAUNCH_US = {"cuda": 5.0, "cpu": 2.0}  # an op shorter than this per call is shorter than its launch/dispatch


def default_logdir() -> Path:
    """Where profiled runs write their traces unless told otherwise: cache_dir()/runs."""
    return cache_dir() / "runs"


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


class Capture:
    """`with Capture(...) as cap:` around a generation; then cap.steps are filled by the engine and
    cap.finish(...) writes the traces and returns the op table and summary."""

    def __init__(self, device: torch.device, logdir: str | Path | None, run_id: str, extras: tuple[str, ...] = ()):
        self.device, self.run_id, self.extras = device, run_id, extras
        self.run_dir = Path(logdir or default_logdir()) / run_id
        self.steps: list[dict] = []  # per forward pass: phase, seqs [(new, past)], logits_rows
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._prof = torch.profiler.profile(activities=activities, schedule=_record_every_step,
                                            **{EXTRAS[x]: True for x in extras})
        self._rec = recording()

    def __enter__(self) -> Capture:
        self._rec.__enter__()
        with _quiet_stderr():
            self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        try:
            with _quiet_stderr():
                self._prof.__exit__(*exc)
        finally:
            self._rec.__exit__(*exc)

    def sync(self) -> None:
        """Wait for the device at the end of the prefill range, so the range's wall time covers its kernels
        (the step waits for its tokens right after anyway). A decode range needs none: it spans queueing one
        step (Engine.decode)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def begin_step(self) -> None:
        """An engine step begins: from the second on, the profiler starts its next step, so the trace holds one
        ProfilerStep#N range per engine forward pass (the first opened with the profile)."""
        if self.steps:
            self._prof.step()

    def step(self, phase: str, seqs: list[tuple[int, int]], logits_rows: int) -> None:
        """An engine step was queued: keep its shapes for the cost model."""
        self.steps.append({"phase": phase, "seqs": seqs, "logits_rows": logits_rows})

    # -- after the run ----------------------------------------------------------------------------

    def finish(self, config: dict, hardware: dict, greedy: bool, args) -> tuple[list[dict], dict]:
        """Write the traces; return (op records, summary)."""
        times, calls, busy, wall = self._op_times()
        p = Precision.of(config)
        costs = {ph: {} for ph in PHASES}
        for s in self.steps:
            c = range_costs(step_costs(args, p, s["seqs"], s["logits_rows"], greedy,
                                       from_cache=s["phase"] == "decode"))
            acc = costs[s["phase"]]
            for name, (f, b) in c.items():
                f0, b0 = acc.get(name, (0.0, 0.0))
                acc[name] = (f0 + f, b0 + b)
        records = []
        for (phase, name), t_us in sorted(times.items(), key=lambda kv: (PHASES.index(kv[0][0]), _order(kv[0][1]))):
            flops, nbytes = costs[phase].get(name, (0.0, 0.0))
            records.append(classify(phase, name, calls[phase, name], t_us, flops, nbytes, hardware,
                                    self.device.type))
        summary = self._summary(records, busy, wall)
        summary["trace_dir"] = str(self.run_dir)
        summary.update(self._write_traces())
        return records, summary

    def _op_times(self):
        """Time (us) and calls per (phase, range name); device busy and wall time per phase."""
        names = set(OPS) | set(FUSED)
        times: dict[tuple[str, str], float] = {}
        calls: dict[tuple[str, str], int] = {}
        busy = {ph: 0.0 for ph in PHASES}
        wall = {ph: 0.0 for ph in PHASES}
        on_gpu = self.device.type == "cuda"
        for e in self._prof.events():
            if e.name in PHASES:
                wall[e.name] += e.cpu_time_total
                # every kernel launched inside the phase (graph replays and unnamed copies included)
                busy[e.name] += e.device_time_total if on_gpu else 0.0
                continue
            if e.name not in names:
                continue
            phase, parent = None, e.cpu_parent
            while parent is not None:
                if parent.name in PHASES:
                    phase = parent.name
                    break
                parent = parent.cpu_parent
            if phase is None:
                continue
            t = e.device_time_total if on_gpu else e.cpu_time_total
            times[phase, e.name] = times.get((phase, e.name), 0.0) + t
            calls[phase, e.name] = calls.get((phase, e.name), 0) + 1
            if not on_gpu:
                busy[phase] += t
        return times, calls, busy, wall

    def _summary(self, records: list[dict], busy: dict, wall: dict) -> dict:
        out = {"phases": {}}
        for ph in PHASES:
            rows = [r for r in records if r["phase"] == ph]
            total = sum(r["time_ms"] for r in rows)
            if not rows:
                continue
            entry = {"op_time_ms": total, "time_share": {r["op"]: r["time_ms"] / total for r in rows if total},
                     "bound_share": {}}
            for r in rows:
                entry["bound_share"][r["bound"]] = entry["bound_share"].get(r["bound"], 0.0) + (
                    r["time_ms"] / total if total else 0.0)
            if self.device.type == "cuda" and wall[ph]:
                # the device ran this phase's kernels for busy of its wall time: the rest is idle or host-bound
                entry["device_busy_share"] = min(1.0, busy[ph] / wall[ph])
                entry["idle_share"] = 1.0 - entry["device_busy_share"]
            out["phases"][ph] = entry
        return out

    def _write_traces(self) -> dict:
        """<run_dir>/trace.json.gz for Perfetto / chrome://tracing, and <run_dir>/tuner.pt.trace.json.gz
        for TensorBoard's profiler plugin (CUDA runtime/driver events renamed "runtime", which the plugin's
        last release needs to link kernels to ops)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        perfetto = self.run_dir / "trace.json.gz"
        self._prof.export_chrome_trace(str(perfetto))
        with gzip.open(perfetto, "rt") as f:
            trace = json.load(f)
        ours = set(OPS) | set(FUSED) | set(PHASES)
        for ev in trace.get("traceEvents", []):
            if ev.get("cat") in ("cuda_runtime", "cuda_driver"):
                ev["cat"] = "runtime"
        tb = self.run_dir / "tuner.pt.trace.json.gz"
        with gzip.open(tb, "wt") as f:  # TensorBoard's plugin counts user_annotation ranges as operators
            json.dump(trace, f)
        for ev in trace.get("traceEvents", []):  # Perfetto: tuner's ranges in their own category
            if ev.get("cat") in ("user_annotation", "cpu_op") and ev.get("name") in ours:
                ev["cat"] = CATEGORY
        with gzip.open(perfetto, "wt") as f:
            json.dump(trace, f)
        return {"perfetto_trace": str(perfetto), "tensorboard_trace": str(tb), "extras": list(self.extras),
                "profiler_steps": len(self.steps)}


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 while the profiler starts and stops: torch's C++ side prints a
    "profiler_start" / "profiler_stop" line there each time, which would land in every notebook cell."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _order(name: str) -> int:
    return OPS.index(name) if name in OPS else len(OPS) + list(FUSED).index(name)


def classify(phase: str, op: str, calls: int, time_us: float, flops: float, nbytes: float, hw: dict,
             device_type: str) -> dict:
    """One row of the op table: achieved rates against the measured peaks, and the verdict."""
    t_s = time_us / 1e6
    peak_tflops, peak_gbs = hw["matmul_tflops"], hw["bandwidth_gbs"]
    tflops = flops / t_s / 1e12 if t_s else 0.0
    gbs = nbytes / t_s / 1e9 if t_s else 0.0
    pc, pb = tflops / peak_tflops, gbs / peak_gbs
    ai = flops / nbytes if nbytes else 0.0
    ridge = peak_tflops * 1e12 / (peak_gbs * 1e9)
    per_call = time_us / max(calls, 1)
    if per_call < LAUNCH_US[device_type]:
        bound = "overhead"
        why = f"{per_call:.1f} us per call: shorter than a {device_type} launch, dispatch dominates"
    elif max(pc, pb) < BOUND_PCT:
        bound = "overhead"
        why = (f"{pb:.0%} of bandwidth and {pc:.0%} of compute: launch, dispatch or latency, "
               "not the hardware's limits, set its time")
    elif pb >= pc:
        bound = "memory"
        why = (f"moves {nbytes / max(calls, 1) / 1e6:.3g} MB per call at {gbs:.1f} GB/s ({pb:.0%} of measured "
               f"bandwidth); {ai:.3g} FLOP/B is {'below' if ai < ridge else 'above'} the ridge {ridge:.3g}")
        if pb > 1:
            why += "; above the memory ceiling, so its data came from cache"
    else:
        bound = "compute"
        why = (f"{tflops:.3g} TFLOP/s ({pc:.0%} of the measured matmul peak); {ai:.3g} FLOP/B is "
               f"{'above' if ai >= ridge else 'below'} the ridge {ridge:.3g}")
    return {"phase": phase, "op": op, "calls": calls, "time_ms": time_us / 1e3, "flops": flops, "bytes": nbytes,
            "intensity": ai, "achieved_tflops": tflops, "achieved_gbs": gbs, "pct_peak_compute": pc,
            "pct_peak_bandwidth": pb, "bound": bound, "explanation": why}

