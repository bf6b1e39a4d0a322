# ruff: noqa: B023  (each timed closure runs inside the loop iteration that defines it)
"""The GPU suite (how GPU work is proven here): environment, GPU tests, kernel microbenchmarks, end-to-end decode,
serving under traffic.

    PYTHONPATH=. python3 benchmarks/gpu_suite.py --out DIR [--quick]

Writes DIR/gpu_suite.json and prints a short table last. Every figure is a fraction of ceilings measured
in the same run (device-to-device copy bandwidth, bf16 matmul rate), timed with CUDA events after warm-up,
median of many runs, inputs rotated past L2 where they would fit in it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def sh(cmd: str) -> str:
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception as e:  # noqa: BLE001
        return f"unavailable: {e}"


def environment() -> dict:
    import cupy

    p = torch.cuda.get_device_properties(0)
    return {
        "gpu": p.name, "sm_count": p.multi_processor_count, "memory_gib": round(p.total_memory / 2**30, 1),
        "compute_capability": f"{p.major}.{p.minor}",
        "driver": sh("nvidia-smi --query-gpu=driver_version --format=csv,noheader"),
        "cuda_torch": torch.version.cuda, "torch": torch.__version__, "cupy": cupy.__version__,
        "nvrtc": ".".join(map(str, cupy.cuda.nvrtc.getVersion())), "python": platform.python_version(),
        "commit": os.environ.get("TUNER_COMMIT") or sh(f"git -C {ROOT} rev-parse HEAD") or "unknown",
    }


def time_ms(fn, iters: int = 50, warmup: int = 5) -> float:
    """Median milliseconds of fn() by CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def time_graph_ms(fn, reps: int = 20, replays: int = 15) -> float:
    """Median milliseconds of one fn() with host overhead removed: `reps` calls captured in a CUDA graph,
    the graph replayed and timed by CUDA events. (Timing single launches would time Python, not the GPU,
    for kernels shorter than their launch path.)"""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm up where the capture runs: compiles, caches the stream wrapper
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        for _ in range(reps):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / reps)
    times.sort()
    return times[len(times) // 2]


def ceilings() -> dict:
    n = 1 << 30
    src = torch.randn(n // 4, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = time_ms(lambda: dst.copy_(src), iters=20)
    a = torch.randn(8192, 8192, device="cuda").bfloat16()
    b = torch.randn(8192, 8192, device="cuda").bfloat16()
    mm_ms = time_ms(lambda: a @ b, iters=20)
    return {"copy_gbs": 2 * n / copy_ms / 1e6, "bf16_matmul_tflops": 2 * 8192**3 / mm_ms / 1e9}


def run_tests(out: Path) -> dict:
    xml = out / "gpu_tests.xml"
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={xml}", str(ROOT / "tests" / "test_gpu.py")],
                       cwd=ROOT, capture_output=True, text=True, timeout=330)
    (out / "gpu_tests.log").write_text(r.stdout + r.stderr)
    res = {"returncode": r.returncode, "seconds": round(time.time() - t, 1)}
    try:
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        res.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
        res["failed"] = [c.get("name") for c in suite.iter("testcase")
                         if c.find("failure") is not None or c.find("error") is not None][:40]
        res["first_failure"] = next((c.find("failure").get("message", "")[:600] for c in suite.iter("testcase")
                                     if c.find("failure") is not None), None)
    except (OSError, ET.ParseError) as e:
        res["error"] = str(e)
        res["tail"] = (r.stdout + r.stderr)[-3000:]
    return res


def bench_attention(bw: float) -> list[dict]:
    import dataclasses

    import torch.nn.functional as F

    from tuner.backends import cupy_ops, torch_ops
    from tuner.engine.kv_cache import KVCache, PagedKVCache
    from tuner.models.args import resolve_model

    rows = []
    for model, B, ctx, paged in [("llama-3.1-8b", 8, 4096, True), ("llama-3.1-8b", 8, 4096, False),
                                 ("llama-3.1-8b", 1, 4096, True), ("llama-3.1-8b", 8, 16384, True),
                                 ("llama-3.1-8b", 32, 2048, True), ("llama-3.2-1b", 1, 192, True),
                                 ("llama-3.2-1b", 8, 1024, True)]:
        args, _ = resolve_model(model)
        H, Hkv, D = args.n_heads, args.n_kv_heads, args.head_dim
        layers = max(1, -(-(64 << 20) // (B * ctx * Hkv * D * 4)))  # rotate layers past L2
        a = dataclasses.replace(args, n_layers=layers)
        dev = torch.device("cuda")
        cache = (PagedKVCache(a, B, ctx, torch.bfloat16, "auto", dev, 16) if paged
                 else KVCache(a, B, ctx, torch.bfloat16, "auto", dev))
        cache.reserve([ctx] * B)
        cache.k.normal_()
        cache.v.normal_()
        q = torch.randn(B, H, D, device=dev).bfloat16()
        seq = torch.full((B,), ctx, dtype=torch.int32, device=dev)
        tables = cache.decode_tables(B)
        plan = cupy_ops.plan_attention(B, H, Hkv, D, ctx, dev)
        i = [0]

        def kern():
            i[0] = (i[0] + 1) % layers
            cupy_ops.decode_attention(q, cache, i[0], tables, cache.block_len, seq, plan)

        ms = time_graph_ms(kern)
        host_ms = time_ms(kern, iters=50)
        nbytes = 2 * B * ctx * Hkv * D * 2 + 2 * B * H * D * 2
        row = {"model": model, "batch": B, "context": ctx, "layout": "paged16" if paged else "contiguous", "ms": ms,
               "gbs": nbytes / ms / 1e6, "frac_bw": nbytes / ms / 1e6 / bw, "parts": plan.num_parts,
               "eager_launch_ms": host_ms}
        if not paged:  # torch SDPA on the same contiguous cache
            qs = q[:, :, None]

            def sdpa():
                i[0] = (i[0] + 1) % layers
                F.scaled_dot_product_attention(qs, cache.k[i[0], :B], cache.v[i[0], :B], enable_gqa=True)

            row["sdpa_ms"] = time_graph_ms(sdpa)
            row["speedup_vs_sdpa"] = row["sdpa_ms"] / ms
        # how the split over the context changes the time, each split checked against the torch twin first
        # (the chunked, cp.async and fused-merge kernels measured at 458af3a and 6eac2ed, the build variants
        # at 51f40ae and 7d6b234: NOTES-gpu.md)
        ref = torch_ops.decode_attention(q, cache, 0, tables, cache.block_len, seq).float()
        row["splits"] = {}
        splits = ([(2, 32), (4, 32), (4, 64), (8, 32), (16, 32)] if (B, ctx, paged) == (8, 4096, True) else
                  [(4, 32), (4, 64), (8, 32), (4, 256)] if ctx <= 256 else [(4, 32), (8, 32)])
        for waves, min_part in splits:
            name = f"w{waves}/p{min_part}"
            try:
                p2 = cupy_ops.AttentionPlan(B, H, Hkv, D, ctx, dev, waves=waves, min_part=min_part)
                got = cupy_ops.decode_attention(q, cache, 0, tables, cache.block_len, seq, p2).float()
                err = ((got - ref).norm() / ref.norm()).item()

                def split(p2=p2):
                    i[0] = (i[0] + 1) % layers
                    cupy_ops.decode_attention(q, cache, i[0], tables, cache.block_len, seq, p2)

                t_ms = time_graph_ms(split)
                row["splits"][name] = {"parts": p2.num_parts, "ms": t_ms, "rel_err": err,
                                       "frac_bw": nbytes / t_ms / 1e6 / bw}
            except Exception as e:  # noqa: BLE001 - a split that fails is a result too
                row["splits"][name] = {"error": f"{type(e).__name__}: {e}"[:300]}
        rows.append(row)
        cache = None
        torch.cuda.empty_cache()
    return rows


def bench_gemv(bw: float) -> list[dict]:
    from tuner.backends import cupy_ops
    from tuner.models.quant import Int4Linear, Int8Linear

    rows = []
    for N, K in [(4096, 14336), (14336, 4096)]:
        w = torch.randn(N, K, device="cuda").bfloat16() * 0.02
        copies = 4
        l4 = [Int4Linear(w, None, 128) for _ in range(copies)]
        l8 = [Int8Linear(w) for _ in range(copies)]
        dense = [w.clone() for _ in range(copies)]
        for M in (1, 8):
            x = torch.randn(M, K, device="cuda").bfloat16()
            i = [0]

            def nxt():
                i[0] = (i[0] + 1) % copies
                return i[0]

            ms4 = time_graph_ms(lambda: cupy_ops.int4_linear(x, *(lambda L: (L.weight, L.scale, L.zero))(l4[nxt()]),
                                                        None, 128), reps=40)
            ms8 = time_graph_ms(lambda: (lambda L: cupy_ops.int8_linear(x, L.weight, L.scale, None))(l8[nxt()]),
                                reps=40)
            msd = time_graph_ms(lambda: x @ dense[nxt()].t(), reps=40)
            b4 = N * K // 2 + 2 * N * (K // 128) * 2
            b8 = N * K + N * 2
            bd = N * K * 2
            rows.append({"N": N, "K": K, "M": M, "int4_ms": ms4, "int4_frac_bw": b4 / ms4 / 1e6 / bw,
                         "int8_ms": ms8, "int8_frac_bw": b8 / ms8 / 1e6 / bw,
                         "bf16_cublas_ms": msd, "bf16_frac_bw": bd / msd / 1e6 / bw})
        l4 = l8 = dense = w = None
        torch.cuda.empty_cache()
    return rows


def bench_sampling() -> list[dict]:
    import tuner
    from tuner.backends import cupy_ops
    from tuner.engine.sampling import sample

    rows = []
    for B, V in [(32, 128256), (1, 128256), (8, 32000)]:
        logits = torch.randn(B, V, device="cuda") * 4
        for params in (tuner.SamplingParams(temperature=0.7, top_p=0.9),
                       tuner.SamplingParams(temperature=0.7, top_k=50, top_p=0.9)):
            rng = torch.tensor([0, 0, 0], device="cuda")
            ms = time_graph_ms(lambda: cupy_ops.sample_fused(logits, params, rng))
            ref = time_graph_ms(lambda: sample(logits, params, None))
            rows.append({"batch": B, "vocab": V, "top_k": params.top_k, "top_p": params.top_p, "ms": ms,
                         "torch_sort_ms": ref, "speedup": ref / ms})
    return rows


def bench_e2e(bw: float, quick: bool, out: Path, device: str = "cuda", models=None, batches=(1, 8, 32),
              cases=None) -> list[dict]:
    """Issue 9's table: decode at batch 1/8/32 on 1B and 8B shapes, torch and cupy, each eager and with CUDA
    graphs; per case the step time, MBU against the copy bandwidth measured in this run, and a profiled run
    of the same workload (its slowdown, idle share and decode op verdicts)."""
    import tuner

    rows = []
    models = models or ["llama-3.2-1b", "llama-3.1-8b"]
    if quick:  # the cupy + CUDA-graph rows only
        batches, cases = batches[:2], cases or [("cupy", True)]
    cases = cases or [(be, g) for be in ("torch", "cupy") for g in (False, True)]
    for model in models:
        e = None
        for B in batches:
            for backend, graphs in cases:
                t = time.time()
                knobs = dict(batch_size=B, backend=backend, cuda_graphs=graphs)
                try:
                    e = (tuner.Engine(model=model, weights="dummy", device=device, dtype="bfloat16", max_seq_len=1024,
                                      kv_cache="paged", block_size=16, **knobs) if e is None else e.replace(**knobs))
                    w = tuner.Workload(batch=B, prompt_len=128, output_len=48)
                    e.generate(tuner.Workload(batch=B, prompt_len=128, output_len=8))  # warm-up: compile, capture
                    meds = []
                    for _ in range(2):
                        r = e.generate(w)
                        steps = sorted(r.timings["decode_step_ms"])
                        meds.append(steps[len(steps) // 2])
                    med = min(meds)
                    # the profiled run is shorter (its trace export is most of an eager case's time); both
                    # figures are medians of decode steps over similar contexts
                    rp = e.generate(tuner.Workload(batch=B, prompt_len=128, output_len=16), profile=True,
                                    logdir=tempfile.gettempdir() + "/tuner-suite-traces")
                    psteps = sorted(rp.timings["decode_step_ms"])
                    pmed = psteps[len(psteps) // 2]
                    nbytes = e.model.decode_weight_bytes() + B * (128 + 24) * e.cache.bytes_per_token
                    dec = rp.profile["phases"].get("decode", {})
                    ops = [{"op": o["op"], "time_ms": round(o["time_ms"], 3), "bound": o["bound"],
                            "pct_peak_bandwidth": round(o["pct_peak_bandwidth"], 3),
                            "pct_peak_compute": round(o["pct_peak_compute"], 3)}
                           for o in rp.ops_records if o["phase"] == "decode"]
                    rows.append({"model": model, "batch": B, "backend": backend, "cuda_graphs": graphs,
                                 "decode_step_ms_median": med, "tpot_ms": r.metrics.get("tpot_ms"),
                                 "mbu": nbytes / med / 1e6 / bw, "tok_s": B * 1e3 / med,
                                 "profiled_step_ms_median": pmed, "profiled_slowdown": pmed / med,
                                 "decode_idle_share": dec.get("idle_share"),
                                 "decode_bound_share": dec.get("bound_share"), "decode_ops": ops,
                                 "seconds": round(time.time() - t, 1)})
                except Exception as ex:  # noqa: BLE001 - an OOM or a failure is recorded, the table goes on
                    rows.append({"model": model, "batch": B, "backend": backend, "cuda_graphs": graphs,
                                 "error": f"{type(ex).__name__}: {ex}"[:400]})
                print("e2e", json.dumps({k: v for k, v in rows[-1].items() if k not in ("decode_ops",)})[:600],
                      flush=True)
                (out / "e2e_partial.json").write_text(json.dumps(rows, indent=1))  # kept if the run is cut
        e = None
        torch.cuda.empty_cache()
    return rows


def bench_serve(device: str = "cuda", model: str = "llama-3.2-1b", rates=(8.0, 16.0), num_prompts: int = 96,
                backend: str = "cupy", graphs: bool = True, dtype: str = "bfloat16", batch: int = 32) -> list[dict]:
    """Serving under Poisson traffic (issue 17): static against continuous batching with chunked prefill on the
    same traffic, per rate: goodput, p99 TTFT / TPOT, the mean time of decode-only and mixed steps, and the
    scheduler's host share of the step. Decode-only steps replay the CUDA graphs of the running rows' bucket;
    prefill chunks (and, on this fixed-shape path, a mixed step's chunks) run through torch."""
    import tuner

    rows = []
    e = tuner.Engine(model=model, weights="dummy", device=device, dtype=dtype, max_seq_len=1024, kv_cache="paged",
                     block_size=16, batch_size=batch, backend=backend, cuda_graphs=graphs)
    e.warmup()
    slo = {"ttft_ms": 500.0, "tpot_ms": 50.0}
    kinds = {"static": e.replace(scheduling="static"),
             "continuous": e.replace(max_num_batched_tokens=2048, enable_chunked_prefill=True)}
    for rate in rates:
        traffic = tuner.Traffic(rate=rate, num_prompts=num_prompts, prompt_len=(128, 768), output_len=(32, 256),
                                seed=0)
        for kind, eng in kinds.items():
            t = time.time()
            try:
                r = tuner.serve_bench(eng, traffic, slo, warmup=False)
                m, tl = r.metrics, r.timeline
                step = {ph: [p["step_ms"] for p in tl if p["phase"] == ph] for ph in ("prefill", "decode", "mixed")}
                rows.append({"model": model, "batch": batch, "backend": backend, "cuda_graphs": graphs,
                             "scheduling": kind, "rate": rate, "slo": slo,
                             **{k: m[k] for k in ("finished", "goodput_req_s", "slo_attainment", "ttft_ms_p99",
                                                  "tpot_ms_p99", "request_throughput", "output_tok_s",
                                                  "preemptions")},
                             "steps": {ph: len(v) for ph, v in step.items()},
                             "step_ms_mean": {ph: sum(v) / len(v) if v else None for ph, v in step.items()},
                             "scheduler_host_share": sum(p["sched_ms"] for p in tl) / sum(p["step_ms"] for p in tl),
                             "seconds": round(time.time() - t, 1)})
            except Exception as ex:  # noqa: BLE001 - recorded, the table goes on
                rows.append({"model": model, "scheduling": kind, "rate": rate,
                             "error": f"{type(ex).__name__}: {ex}"[:400]})
            print("serve", json.dumps(rows[-1])[:600], flush=True)
    return rows


def profile_decode(model: str = "llama-3.2-1b", steps: int = 16) -> dict:
    """Where a CUDA-graph decode step's time goes: device time per kernel (torch.profiler, CUPTI), decode kernels
    only. A run of `steps` decode steps and a run of none (prefill only) are profiled on the same prompt, and
    each kernel's decode share is their difference over `steps`: the prefill's kernels (its GEMMs run once per
    layer, 16 or more calls) cancel instead of counting as decode."""
    from torch.profiler import ProfilerActivity, profile

    import tuner

    e = tuner.Engine(model=model, weights="dummy", device="cuda", dtype="bfloat16", max_seq_len=1024,
                     kv_cache="paged", backend="cupy", cuda_graphs=True)

    def kernels(output_len: int) -> dict[str, tuple[int, float]]:
        w = tuner.Workload(batch=1, prompt_len=128, output_len=output_len)
        e.generate(w)  # warm: compile, capture
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            e.generate(w)
        return {ev.key: (ev.count, getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0))
                for ev in prof.key_averages()}

    prefill_only, full = kernels(1), kernels(steps + 1)
    rows = []
    for name, (count, t) in full.items():
        c0, t0 = prefill_only.get(name, (0, 0.0))
        calls, us = (count - c0) / steps, (t - t0) / steps
        if t and calls >= 1:  # a kernel each decode step launches at least once
            rows.append({"kernel": name[:90], "calls_per_step": round(calls, 1), "us_per_step": round(us, 1)})
    rows.sort(key=lambda r: -r["us_per_step"])
    return {"model": model, "batch": 1, "steps": steps, "kernels": rows[:25],
            "kernel_us_per_step": round(sum(r["us_per_step"] for r in rows), 1),
            "counted": "decode kernels only: (prefill + decode run) - (prefill-only run), per decode step"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--quick", action="store_true", help="end to end: cupy + CUDA graphs at batch 1 and 8 only")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--only", default="attention,gemv,sampling,e2e,serve,profile",
                    help="benchmarks to run, comma-separated")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result = {"schema": "tuner.gpu_suite/1", "environment": environment()}
    print(json.dumps(result["environment"]), flush=True)
    result["ceilings"] = ceilings()
    bw = result["ceilings"]["copy_gbs"]
    print("ceilings", result["ceilings"], flush=True)
    if not args.skip_tests:
        result["tests"] = run_tests(out)
        (out / "gpu_suite.json").write_text(json.dumps(result, indent=1))
        print("tests", {k: v for k, v in result["tests"].items() if k != "failed"}, flush=True)
    for name, fn in (("attention", lambda: bench_attention(bw)), ("gemv", lambda: bench_gemv(bw)),
                     ("sampling", bench_sampling), ("e2e", lambda: bench_e2e(bw, args.quick, out)),
                     ("serve", bench_serve), ("profile", profile_decode)):
        if name not in args.only.split(","):
            continue
        t = time.time()
        try:
            result[name] = fn()
        except Exception as e:  # noqa: BLE001 - one broken benchmark must not lose the others
            import traceback

            result[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}
        print(name, f"{time.time() - t:.1f}s", json.dumps(result[name])[:1500], flush=True)
        (out / "gpu_suite.json").write_text(json.dumps(result, indent=1))  # what finished is kept
    result["seconds"] = round(time.time() - t0, 1)
    (out / "gpu_suite.json").write_text(json.dumps(result, indent=1))
    print(f"\n== GPU suite on {result['environment']['gpu']} ({result['seconds']} s) ==")
    print(f"copy {bw:.0f} GB/s, bf16 matmul {result['ceilings']['bf16_matmul_tflops']:.0f} TFLOP/s")
    t = result.get("tests", {})
    print(f"tests: {t.get('tests')} run, {t.get('failures')} failures, {t.get('errors')} errors")
    prof = result.get("profile", {})
    for k in prof.get("kernels", [])[:12] if isinstance(prof, dict) else []:
        print("profile", k)
    for name in ("attention", "gemv", "sampling", "e2e", "serve"):
        rows = result.get(name, [])
        if isinstance(rows, dict) and "error" in rows:
            print(name, "ERROR", rows["error"][:300])
            continue
        for r in rows:
            print(name, " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                                 if not isinstance(v, (dict, list))))
            for k, v in r.get("splits", {}).items():
                print("   ", k, " ".join(f"{a}={b:.3g}" if isinstance(b, float) else f"{a}={b}" for a, b in v.items()))


if __name__ == "__main__":
    main()
