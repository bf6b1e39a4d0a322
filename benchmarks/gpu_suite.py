# ruff: noqa: B023  (each timed closure runs inside the loop iteration that defines it)
"""The GPU suite (../shared/GPU.md): environment, GPU tests, kernel microbenchmarks, end-to-end decode.

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

    from tuner.backends import cupy_ops, torch_ops  # noqa: F401
    from tuner.engine.kv_cache import KVCache, PagedKVCache
    from tuner.models.args import resolve_model

    rows = []
    args, _ = resolve_model("llama-3.1-8b")
    for B, ctx, paged in [(8, 4096, True), (8, 4096, False), (1, 4096, True), (8, 16384, True), (32, 2048, True)]:
        layers = max(1, -(-(64 << 20) // (B * ctx * 8 * 128 * 4)))  # rotate layers past L2
        a = dataclasses.replace(args, n_layers=layers)
        dev = torch.device("cuda")
        cache = (PagedKVCache(a, B, ctx, torch.bfloat16, "auto", dev, 16) if paged
                 else KVCache(a, B, ctx, torch.bfloat16, "auto", dev))
        cache.reserve([ctx] * B)
        cache.k.normal_()
        cache.v.normal_()
        H, Hkv, D = 32, 8, 128
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
        row = {"batch": B, "context": ctx, "layout": "paged16" if paged else "contiguous", "ms": ms,
               "gbs": nbytes / ms / 1e6, "frac_bw": nbytes / ms / 1e6 / bw, "parts": plan.num_parts,
               "eager_launch_ms": host_ms}
        if not paged:  # torch SDPA on the same contiguous cache
            qs = q[:, :, None]

            def sdpa():
                i[0] = (i[0] + 1) % layers
                F.scaled_dot_product_attention(qs, cache.k[i[0], :B], cache.v[i[0], :B], enable_gqa=True)

            row["sdpa_ms"] = time_graph_ms(sdpa)
            row["speedup_vs_sdpa"] = row["sdpa_ms"] / ms
        if (B, ctx, paged) == (8, 4096, True):  # how the split over the context changes the time
            row["by_waves"] = {}
            for waves in (1, 2, 4, 8, 16):
                p2 = cupy_ops.AttentionPlan(B, H, Hkv, D, ctx, dev, waves=waves)
                row["by_waves"][waves] = (p2.num_parts, time_graph_ms(
                    lambda p2=p2: cupy_ops.decode_attention(q, cache, 0, tables, cache.block_len, seq, p2)))
        rows.append(row)
        cache = None
        torch.cuda.empty_cache()
    return rows


def bench_gemv(bw: float) -> list[dict]:
    from tuner.backends import cupy_ops
    from tuner.engine.quant import Int4Linear, Int8Linear

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


def bench_e2e(bw: float, quick: bool) -> list[dict]:
    import tuner

    rows = []
    cases = [("llama-3.2-1b", 1), ("llama-3.1-8b", 1), ("llama-3.1-8b", 8)]
    if quick:
        cases = cases[:1]
    for model, B in cases:
        for backend, graphs in (("torch", False), ("cupy", False), ("cupy", True)):
            t = time.time()
            e = tuner.Engine(model=model, weights="dummy", device="cuda", dtype="bfloat16", batch_size=B,
                             max_seq_len=1024, kv_cache="paged", block_size=16, backend=backend, cuda_graphs=graphs)
            w = tuner.Workload(batch=B, prompt_len=128, output_len=64)
            e.generate(tuner.Workload(batch=B, prompt_len=16, output_len=8))  # warm-up: compile, capture
            r = e.generate(w)
            steps = r.timings["decode_step_ms"]
            med = sorted(steps)[len(steps) // 2]
            nbytes = e.model.decode_weight_bytes() + B * (128 + 32) * e.cache.bytes_per_token
            rows.append({"model": model, "batch": B, "backend": backend, "cuda_graphs": graphs,
                         "tpot_ms": r.metrics.get("tpot_ms_mean") or r.metrics.get("tpot_ms"),
                         "decode_step_ms_median": med, "mbu": nbytes / med / 1e6 / bw,
                         "tok_s": B * 1e3 / med, "seconds": round(time.time() - t, 1)})
            del e
            torch.cuda.empty_cache()
    return rows


def profile_decode(model: str = "llama-3.2-1b") -> dict:
    """Where a CUDA-graph decode step's time goes: device time per kernel (torch.profiler, CUPTI)."""
    from torch.profiler import ProfilerActivity, profile

    import tuner

    e = tuner.Engine(model=model, weights="dummy", device="cuda", dtype="bfloat16", max_seq_len=1024,
                     kv_cache="paged", backend="cupy", cuda_graphs=True)
    w = tuner.Workload(batch=1, prompt_len=128, output_len=17)
    e.generate(w)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        e.generate(w)
    steps = 16
    rows = []
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t and ev.count >= steps:
            rows.append({"kernel": ev.key[:90], "calls_per_step": round(ev.count / steps, 1),
                         "us_per_step": round(t / steps, 1)})
    rows.sort(key=lambda r: -r["us_per_step"])
    return {"model": model, "batch": 1, "kernels": rows[:25],
            "kernel_us_per_step": round(sum(r["us_per_step"] for r in rows), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--quick", action="store_true", help="fewer end-to-end cases")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--only", default="attention,gemv,sampling,e2e,profile", help="benchmarks to run, comma-separated")
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
                     ("sampling", bench_sampling), ("e2e", lambda: bench_e2e(bw, args.quick)),
                     ("profile", profile_decode)):
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
    for name in ("attention", "gemv", "sampling", "e2e"):
        rows = result.get(name, [])
        if isinstance(rows, dict) and "error" in rows:
            print(name, "ERROR", rows["error"][:300])
            continue
        for r in rows:
            print(name, " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main()
