"""Profiler overhead: the same decode with and without profile=True, alternated in one run.

smollm2-135m shapes (dummy weights), float32, CPU, batch 1 and 8, prompt 128, 64 new tokens. Each of
`--repeats` rounds runs both modes back to back (which goes first alternates), so a noisy machine slows
both alike. The figure is the median decode step of the profiled runs over that of the plain runs.
Target: at most 1.15.

    PYTHONPATH=. python benchmarks/profile_overhead.py      # writes benchmarks/results/profile_overhead-<date>.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
from datetime import date
from pathlib import Path

import torch

import tuner

TARGET = 1.15


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    rows = []
    logdir = Path(tempfile.mkdtemp(prefix="tuner-overhead-"))
    for batch in (1, 8):
        e = tuner.Engine(model=args.model, batch_size=batch, max_seq_len=512)
        e.warmup()
        w = tuner.Workload(batch=batch, prompt_len=128, output_len=64)
        steps = {False: [], True: []}
        for rep in range(args.repeats):
            for profile in ((False, True) if rep % 2 == 0 else (True, False)):
                r = e.generate(w, profile=profile, logdir=logdir)
                steps[profile].append(statistics.median(r.timings["decode_step_ms"]))
        plain, prof = statistics.median(steps[False]), statistics.median(steps[True])
        rows.append({"batch": batch, "plain_step_ms": plain, "profiled_step_ms": prof, "ratio": prof / plain,
                     "plain_runs": steps[False], "profiled_runs": steps[True]})
        print(f"batch {batch}: plain {plain:.2f} ms, profiled {prof:.2f} ms, ratio {prof / plain:.3f} "
              f"(target <= {TARGET})", flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = {"benchmark": "profile_overhead", "date": date.today().isoformat(), "commit": commit,
           "model": args.model, "dtype": "float32", "device": "cpu", "cpu": tuner.calibrate("cpu")["name"],
           "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
           "repeats": args.repeats, "target_ratio_max": TARGET, "results": rows,
           "met": all(r["ratio"] <= TARGET for r in rows)}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"profile_overhead-{date.today().isoformat()}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
