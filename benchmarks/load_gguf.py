"""Loading the real model: time and peak memory of building tuner.Engine(model="smollm2-135m-instruct").

Each repeat is a fresh process (torch, transformers and gguf imported first, outside the measurement), which
builds the float32 engine: the GGUF file parsed, its tensors dequantized into tuner's weights, the KV cache, the
tokenizer. Peak memory is VmHWM minus the resident memory before the build; the KV cache's bytes are taken out,
since they are not weights. Target (issue 18): peak load memory under 1.5x the final weight bytes, under 10 s.

    PYTHONPATH=. python benchmarks/load_gguf.py          # writes benchmarks/results/load_gguf-<date>.json
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

CHILD = r"""
import json, time, torch, transformers, gguf, tokenizers, tuner
def status(key):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS")
t = time.perf_counter()
engine = tuner.Engine(model="smollm2-135m-instruct")
build_s = time.perf_counter() - t
peak = status("VmHWM") - before
print(json.dumps({"build_s": build_s, "load_s": engine.load_s, "peak_bytes": peak,
                  "weights_bytes": engine.model.weight_bytes(), "kv_cache_bytes": engine.cache.nbytes,
                  "peak_less_kv_over_weights": (peak - engine.cache.nbytes) / engine.model.weight_bytes()}))
"""


def measure() -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    runs = [measure() for _ in range(3)]
    result = {"benchmark": "load_gguf", "date": date.today().isoformat(), "model": "smollm2-135m-instruct (Q4_1)",
              "runs": runs, "median_build_s": statistics.median(r["build_s"] for r in runs),
              "max_peak_less_kv_over_weights": max(r["peak_less_kv_over_weights"] for r in runs),
              "targets": {"build_s_max": 10.0, "peak_less_kv_over_weights_max": 1.5}}
    for r in runs:
        print(f"build {r['build_s']:.2f} s (weights {r['load_s']:.2f} s), peak {r['peak_bytes'] / 2**20:.0f} MiB: "
              f"{r['peak_less_kv_over_weights']:.2f}x the {r['weights_bytes'] / 2**20:.0f} MiB of weights, "
              f"the {r['kv_cache_bytes'] / 2**20:.0f} MiB KV cache aside")
    out = Path(__file__).parent / "results" / f"load_gguf-{result['date']}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
