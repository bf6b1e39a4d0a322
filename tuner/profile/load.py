"""How busy the machine was while a run was timed: load average, CPU steal and other processes' CPU share.

On a 2-core VM at load average 10, a demo trial took 140 s instead of 1.6 s: torch's threads spin-wait when
the cores are oversubscribed, so every figure of such a run is the machine's, not the config's. Each run
record keeps what `LoadMeter` saw, and `warning()` says in one line when it was enough to distort timings.
"""

from __future__ import annotations

import os
import time

import psutil

# other processes' share of all CPUs during the run above which timings are called distorted: torch's
# threads then share their cores (measured: 4 spinning processes on 2 cores took 60-70%)
BUSY_OTHERS = 0.25
BUSY_STEAL = 0.10  # the hypervisor gave this share of the CPUs' time to other guests


def _busy(t) -> float:
    """CPU seconds spent working (guest time is already inside user on Linux)."""
    return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


class LoadMeter:
    """Started when a run starts; `stop()` gives the run's load record."""

    def __init__(self):
        self.cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.all_cpus = psutil.cpu_count() or self.cpus
        self.me = psutil.Process()
        self.load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        self.t0, self.me0, self.wall0 = psutil.cpu_times(), self.me.cpu_times(), time.perf_counter()

    def stop(self) -> dict:
        t1, me1, wall = psutil.cpu_times(), self.me.cpu_times(), time.perf_counter() - self.wall0
        capacity = max(wall * self.all_cpus, 1e-9)  # CPU seconds the machine had during the run
        mine = (me1.user - self.me0.user) + (me1.system - self.me0.system)
        steal = getattr(t1, "steal", 0.0) - getattr(self.t0, "steal", 0.0)
        others = max(0.0, _busy(t1) - _busy(self.t0) - mine)
        load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return {"cpus": self.cpus, "load_avg_1m": _round(max(x for x in (self.load_before, load_after, 0.0)
                                                            if x is not None)),
                "others_cpu_share": _round(min(1.0, others / capacity)), "steal_share": _round(steal / capacity),
                "own_cpu_share": _round(min(1.0, mine / capacity)), "seconds": _round(wall)}


def _round(x: float) -> float:
    return round(x, 4)


def busy(load: dict | None) -> bool:
    """True when the run shared its CPUs enough to distort its timings."""
    if not load:
        return False
    return load.get("others_cpu_share", 0) > BUSY_OTHERS or load.get("steal_share", 0) > BUSY_STEAL


def warning(load: dict | None) -> str | None:
    """One line for a run whose timings the machine distorted, else None."""
    if not busy(load):
        return None
    parts = [f"other processes used {load['others_cpu_share']:.0%} of the CPUs"]
    if load.get("steal_share", 0) > BUSY_STEAL:
        parts.append(f"the hypervisor stole {load['steal_share']:.0%}")
    return (f"busy machine: {' and '.join(parts)} during this run (load average {load['load_avg_1m']:.1f} on "
            f"{load['cpus']} CPUs): its timings are the machine's as much as the config's; measure again when it is "
            "quiet")
