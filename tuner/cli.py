"""The `tuner` command: `tuner run` (one profiled-metrics run), `tuner presets`.

Engine and sampling flags are generated from the knob registry, so `tuner run --help` lists every knob.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .knobs import ENGINE_KNOBS, SAMPLING_KNOBS, Knob

# Sampling knobs set by the workload flags instead (--output-len); a sampling knob whose name an engine knob
# also has gets the flag --sampling-NAME.
_SAMPLING_SKIP = {"max_new_tokens"}


def _flag(knob: Knob, prefix: str = "") -> str:
    return "--" + prefix + knob.name.replace("_", "-")


def _add_knob(group, knob: Knob, dest: str, prefix: str = "") -> None:
    help_text = f"{knob.help} (default {knob.default!r}; {knob.allowed()})"
    if knob.type is bool:
        group.add_argument(_flag(knob, prefix), dest=dest, action=argparse.BooleanOptionalAction, default=None,
                           help=help_text)
    else:
        group.add_argument(_flag(knob, prefix), dest=dest, type=str, default=None, metavar=knob.name.upper(),
                           help=help_text)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tuner", description="Run, profile and tune a real LLM inference engine.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate for a workload and print its metrics",
                         description="Load a model (preset shapes with dummy weights, or a local HF checkpoint), "
                                     "generate for a synthetic workload or given prompts, and print TTFT, TPOT, "
                                     "ITL percentiles, throughput, MBU and memory.")
    eng = run.add_argument_group("engine knobs")
    for knob in ENGINE_KNOBS.values():
        _add_knob(eng, knob, "engine_" + knob.name)
    smp = run.add_argument_group("sampling knobs")
    for knob in SAMPLING_KNOBS.values():
        if knob.name not in _SAMPLING_SKIP:
            _add_knob(smp, knob, "sampling_" + knob.name, "sampling-" if knob.name in ENGINE_KNOBS else "")
    wl = run.add_argument_group("workload")
    wl.add_argument("--prompt-len", type=int, default=128, help="tokens per synthetic prompt (default 128)")
    wl.add_argument("--output-len", type=int, default=64, help="tokens to generate per prompt (default 64)")
    wl.add_argument("--num-prompts", type=int, default=None, help="synthetic prompts (default: batch size)")
    wl.add_argument("--workload-seed", type=int, default=0, help="seed of the synthetic prompts (default 0)")
    wl.add_argument("--prompt", action="append", default=None,
                    help="a text prompt instead of the synthetic workload (needs the checkpoint's tokenizer; "
                         "repeat for several)")
    out = run.add_argument_group("output")
    out.add_argument("--threads", type=int, default=None, help="CPU threads torch may use (default: torch's)")
    out.add_argument("--no-warmup", action="store_true", help="skip the short warm-up batch before the run")
    out.add_argument("--json", type=Path, default=None, help="write the RunResult (tuner.run/1) to this file")
    out.add_argument("--profile", action="store_true",
                     help="profile the run: print each op's time, rates and bound; write traces")
    out.add_argument("--logdir", type=Path, default=None,
                     help="where profiled runs write their traces (default ~/.cache/tuner/runs)")

    sub.add_parser("presets", help="list the model presets (real models' shapes, dummy weights)")
    hw = sub.add_parser("hw", help="this device: datasheet and measured bandwidth and matmul peaks",
                        description="Show the device and its datasheet and measured ceilings (measured once, "
                                    "then cached).")
    hw.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    hw.add_argument("--force", action="store_true", help="measure again instead of reading the cache")
    tb = sub.add_parser("tensorboard", help="serve the profiled runs in TensorBoard on 127.0.0.1",
                        description="Start TensorBoard with the PyTorch profiler plugin over a log dir; Ctrl-C stops.")
    tb.add_argument("--logdir", type=Path, default=None, help="default ~/.cache/tuner/runs")
    tb.add_argument("--port", type=int, default=None, help="default: a free port")
    return p


def _collect(args, prefix: str, knobs: dict[str, Knob]) -> dict:
    values = {}
    for name, knob in knobs.items():
        text = getattr(args, prefix + name, None)
        if text is not None:
            values[name] = text if isinstance(text, bool) else knob.parse(text)
    return values


def _progress(desc: str):
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit="layer", leave=False, disable=None, file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        if done == total:
            bar.close()

    return update


def cmd_run(args) -> int:
    import torch

    from .config import EngineConfig, SamplingParams
    from .engine.engine import Engine
    from .engine.workload import Workload

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = EngineConfig(**_collect(args, "engine_", ENGINE_KNOBS))
    sampling = SamplingParams(max_new_tokens=args.output_len, **_collect(args, "sampling_", SAMPLING_KNOBS))
    if args.prompt:
        prompts = args.prompt
    else:
        prompts = Workload(batch=args.num_prompts or cfg.batch_size, prompt_len=args.prompt_len,
                           output_len=args.output_len, seed=args.workload_seed)
    engine = Engine(cfg, progress=_progress(f"loading {cfg.model}"))
    if not args.no_warmup:
        engine.warmup()
    from tqdm.auto import tqdm

    bar = tqdm(desc="generating", unit="tok", leave=False, disable=None, file=sys.stderr)

    def on_step(event: dict) -> None:
        bar.total = event["n_requests"] * sampling.max_new_tokens
        bar.n = event["batch_index"] * cfg.batch_size * sampling.max_new_tokens + event["tokens"]
        bar.refresh()

    result = engine.generate(prompts, sampling, on_step=on_step, profile=args.profile, logdir=args.logdir)
    bar.close()
    print(result.table())
    if args.profile:
        print()
        print(result.ops_text())
    if result.text is not None and args.prompt:
        for prompt, text in zip(args.prompt, result.text, strict=True):
            print(f"\n>>> {prompt}\n{text}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(result.to_json(indent=1))
        print(f"\nwrote {args.json}")
    return 0


def cmd_presets(args) -> int:
    from .models.args import PRESETS, ModelArgs

    print(f"{'preset':<14} {'family':<8} {'params':>8} {'layers':>6} {'dim':>5} {'heads':>6} {'kv':>3} "
          f"{'head_dim':>8} {'vocab':>7} {'bf16 GB':>8}")
    for name, hf in PRESETS.items():
        a = ModelArgs.from_hf_config(hf)
        n = a.n_params()
        size = f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
        print(f"{name:<14} {a.family:<8} {size:>8} {a.n_layers:>6} {a.dim:>5} {a.n_heads:>6} {a.n_kv_heads:>3} "
              f"{a.head_dim:>8} {a.vocab_size:>7} {2 * n / 1e9:>8.2f}")
    return 0


def cmd_hw(args) -> int:
    import torch

    from .config import _check_cuda
    from .profile.hardware import hw_table

    if args.device != "cpu":
        _check_cuda(args.device)
    print(hw_table(torch.device(args.device), force=args.force))
    return 0


def cmd_tensorboard(args) -> int:
    import time

    from .profile.tensorboard import tensorboard

    with tensorboard(args.logdir, args.port) as tb:
        print(f"TensorBoard on {tb.profiler_url()} (log dir {tb.logdir}); Ctrl-C stops it")
        while tb.process.poll() is None:
            time.sleep(1)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return {"run": cmd_run, "presets": cmd_presets, "hw": cmd_hw,
                "tensorboard": cmd_tensorboard}[args.command](args)
    except ValueError as e:
        parser.exit(2, f"tuner: error: {e}\n")
    except RuntimeError as e:
        from .engine.kv_cache import KVCacheFullError

        if not isinstance(e, KVCacheFullError):
            raise
        parser.exit(1, f"tuner: error: {e}\n")
    except KeyboardInterrupt:
        parser.exit(130, "tuner: interrupted\n")


if __name__ == "__main__":
    sys.exit(main())
