"""`%tuner` / `%%tuner`: load a model, run it, open the panel, read the hardware, compare runs.

Imports stay light: torch and the engine load when a subcommand first needs them.
"""

from __future__ import annotations

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser, argument, magic_arguments, parse_argstring

from .. import fmt
from ..actions import TokenBar, add_traffic_flags, load_progress, parse_knobs, parse_slo, traffic_of
from ..knobs import ENGINE_KNOBS, WORKLOAD_KNOBS, shared_names
from ..tune.export import FORMATS
from ..tune.sweep import SAMPLERS
from .session import Session, compare

DEFAULT_MODEL = ENGINE_KNOBS["model"].default


@magic_arguments(name="%tuner load")
@argument("model", help="a preset or real model (see `tuner presets`), a .gguf file or a local Hugging Face "
                         "checkpoint directory")
@argument("--weights", choices=ENGINE_KNOBS["weights"].choices, help=ENGINE_KNOBS["weights"].help)
@argument("--device", help=ENGINE_KNOBS["device"].help)
@argument("--dtype", choices=ENGINE_KNOBS["dtype"].choices, help=ENGINE_KNOBS["dtype"].help)
@argument("knobs", nargs="*", help="more engine knobs as key=value (batch_size=8 quant=int8 ...)")
def _load_args(line):
    """Load a model. Later runs reuse its weights unless a knob that shapes them changes."""


def _workload_flags(func):
    """--prompt-len, --output-len, --num-prompts, --workload-seed: the registry's workload knobs as flags."""
    for knob in reversed(WORKLOAD_KNOBS.values()):
        func = argument("--" + knob.name.replace("_", "-"), help=f"{knob.help} (default {knob.default})")(func)
    return func


@magic_arguments(name="%tuner run")
@argument("knobs", nargs="*", help="engine, sampling and workload knobs as key=value; %%tuner run takes them "
                                   "one per line in the cell too")
@_workload_flags
@argument("--prompt", action="append", help="a text prompt instead of synthetic ones (repeatable)")
@argument("--profile", action="store_true", help="profile: per-op times, roofline verdicts, traces")
@argument("--profile-extras", default=None, metavar="EXTRAS",
          help="with --profile, also record (comma-separated): shapes, memory, stack")
@argument("-o", "--output", action="store_true", help="return the RunResult instead of displaying it")
def _run_args(line):
    """Run the engine on a workload and show its metrics (and op profile with --profile)."""


@magic_arguments(name="%tuner hw")
@argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
@argument("--force", action="store_true", help="measure again instead of reading the cache")
def _hw_args(line):
    """This device: datasheet peaks beside the measured bandwidth and matmul rates."""


@magic_arguments(name="%tuner history")
@argument("-n", type=int, default=0, help="only the last n runs")
def _history_args(line):
    """The runs of this session, one row each."""


@magic_arguments(name="%tuner compare")
@argument("runs", nargs="+", help="two runs or more: run ids (or prefixes) or history indices, e.g. -2 -1")
@argument("-o", "--output", action="store_true", help="return the Comparison instead of displaying it")
def _compare_args(line):
    """Runs side by side: the knobs that differ, the metrics they gave (and each one's ratio to the first), the
    op-by-op change, and overlaid step latency and roofline charts."""


@magic_arguments(name="%tuner tensorboard")
@argument("--logdir", help="default: where profiled runs write (~/.cache/tuner/runs)")
@argument("--port", type=int, help="default: a free port")
@argument("--stop", action="store_true", help="stop the TensorBoard this session started")
def _tensorboard_args(line):
    """Start TensorBoard (PyTorch profiler plugin) on 127.0.0.1 over the profiled runs."""


@magic_arguments(name="%%tuner sweep")
@argument("--n-trials", type=int, help="trials the study should hold (default 20; sampler grid: the whole grid)")
@argument("--sampler", choices=SAMPLERS, help="default tpe")
@argument("--objective", action="append", help="max:METRIC or min:METRIC (repeatable; default max:output_tok_s)")
@argument("--constraint", action="append", help="an SLO, e.g. 'tpot_ms_p99 <= 50' (quote it; repeatable)")
@argument("--storage", help="Optuna storage URL (default sqlite:///tuner-runs/sweeps.db)")
@argument("--study", help="study name (default: derived from the sweep, so running the cell again resumes)")
@argument("--repeats", type=int, help="re-run the top configurations this many times (confidence intervals)")
@argument("-o", "--output", action="store_true", help="return the SweepResult instead of displaying it")
def _sweep_args(line):
    """Sweep knobs under SLOs: the cell holds the YAML space (knob: [values]) or a whole sweep document with
    space, base, workload, objectives, constraints sections. Fixed knobs default to the loaded engine's model,
    device and dtype."""


@magic_arguments(name="%tuner export")
@argument("path", help="file or directory to write")
@argument("--format", default="tuner", choices=(*FORMATS, "all"))
@argument("--run", help="export this run (id, prefix or history index; default: the latest run)")
@argument("--best", action="store_true", help="export the best configuration of the latest sweep")
@argument("--objective", help="with --best: the objective whose winner to export")
def _export_args(line):
    """Write a run's or the latest sweep's best configuration as tuner YAML, vLLM config.yaml, HF
    generation_config.json, TGI .env or TensorRT-LLM YAML (each with its provenance)."""


def _serve_args(line):
    """Serve requests arriving over time (continuous batching) and show TTFT/TPOT percentiles, goodput under
    --slo and the queue over time; --capacity finds the highest rate that meets the SLO."""


_serve_args.parser = MagicArgumentParser(prog="%tuner serve", description=_serve_args.__doc__)
_serve_args.parser.add_argument("knobs", nargs="*", help="engine and scheduler knobs as key=value (batch_size=8 "
                                                         "enable_chunked_prefill=true ...)")
add_traffic_flags(_serve_args.parser)
_serve_args.parser.add_argument("-o", "--output", action="store_true", help="return the record instead of showing it")
_serve_args.__doc__ = _serve_args.parser.format_help()  # as magic_arguments writes the others' help


@magic_arguments(name="%tuner panel")
def _panel_args(line):
    """The control panel: knobs as widgets, Run and Stop, live progress and charts, run history."""


PARSERS = {"load": _load_args, "run": _run_args, "serve": _serve_args, "panel": _panel_args, "hw": _hw_args,
           "history": _history_args,
           "compare": _compare_args, "tensorboard": _tensorboard_args, "sweep": _sweep_args, "export": _export_args}


def _doc() -> str:
    parts = ["tuner in the notebook: `%tuner SUBCOMMAND ...` (or `%%tuner SUBCOMMAND` with key=value lines in the "
             "cell).\n\nSubcommands: " + ", ".join(PARSERS) + ".\nKnobs (key=value): " + ", ".join(shared_names())
             + "\n"]
    for func in PARSERS.values():
        parts.append(func.__doc__ or "")
    return "\n".join(parts)


@magics_class
class TunerMagics(Magics):
    def __init__(self, shell, session: Session | None = None):
        super().__init__(shell)
        self.session = session or Session()
        self.tensorboard = None

    @line_cell_magic
    def tuner(self, line: str, cell: str | None = None):
        cmd, _, rest = line.strip().partition(" ")
        if not cmd:
            raise UsageError("%tuner needs a subcommand: " + ", ".join(PARSERS) + " (%tuner? explains each)")
        if cmd not in PARSERS:
            raise UsageError(f"unknown subcommand {cmd!r}: use one of {', '.join(PARSERS)}")
        if cmd == "sweep":  # the cell is YAML, not key=value lines
            args = parse_argstring(PARSERS[cmd], rest)
            try:
                return self._sweep(args, cell)
            except (ValueError, OSError) as e:
                raise UsageError(str(e)) from None
        if cell is not None:
            body = [ln.strip() for ln in cell.splitlines() if ln.strip() and not ln.strip().startswith("#")]
            rest = " ".join([rest, *body])
        args = parse_argstring(PARSERS[cmd], rest)
        try:
            return getattr(self, f"_{cmd}")(args)
        except (ValueError, OSError) as e:  # bad knob values, unknown runs, unwritable paths: one clear line
            raise UsageError(str(e)) from None

    tuner.__doc__ = _doc()

    # -- subcommands ---------------------------------------------------------------------------------

    def _load(self, args):
        engine_knobs, sampling, workload = parse_knobs(args.knobs)
        if sampling or workload:
            raise ValueError(f"%tuner load takes engine knobs only; pass {', '.join([*sampling, *workload])} "
                             "to %tuner run")
        engine_knobs["model"] = args.model
        for k in ("weights", "device", "dtype"):
            if getattr(args, k) is not None:
                engine_knobs[k] = getattr(args, k)
        engine = self.session.load(progress=load_progress(f"loading {args.model}"), **engine_knobs)
        a = engine.args
        print(f"loaded {engine.config.model}: {a.n_params() / 1e6:.1f}M parameters, "
              f"{engine.model.weight_bytes() / 2**20:.1f} MiB of weights on {engine.config.device} "
              f"({engine.config.dtype}, quant={engine.config.quant}, backend={engine.config.backend}) in "
              f"{engine.load_s:.1f} s")

    def _run(self, args):
        engine_knobs, sampling, workload = parse_knobs(args.knobs)
        for name, knob in WORKLOAD_KNOBS.items():
            if getattr(args, name) is not None:
                workload[name] = knob.parse(getattr(args, name))
        if self.session.engine is None and "model" not in engine_knobs:
            engine_knobs["model"] = DEFAULT_MODEL
            print(f"no model loaded: using {DEFAULT_MODEL} (dummy weights); %tuner load MODEL picks another")
        bar = TokenBar()
        try:
            result = self.session.run(engine_knobs, sampling, workload, profile=args.profile_extras or args.profile,
                                      prompts=args.prompt, on_step=bar, progress=load_progress("loading"))
        finally:
            bar.close()
        if args.output:
            return result
        from IPython.display import display

        display(result)

    def _serve(self, args):
        from ..serve.bench import capacity
        from ..serve.metrics import check_slo

        engine_knobs, sampling, workload = parse_knobs(args.knobs)
        if sampling or workload:
            raise ValueError(f"%tuner serve takes engine and scheduler knobs; {', '.join([*sampling, *workload])} "
                             "are not: lengths come from --prompt-len and --output-len")
        slo = check_slo(parse_slo(args.slo))
        traffic = traffic_of(args)
        if self.session.engine is None and "model" not in engine_knobs:
            engine_knobs["model"] = DEFAULT_MODEL
            print(f"no model loaded: using {DEFAULT_MODEL} (dummy weights); %tuner load MODEL picks another")
        engine = self.session.load(progress=load_progress("loading"), **engine_knobs)
        if args.capacity:
            if not slo:
                raise ValueError("--capacity needs an SLO: add --slo ttft_ms=500 (and/or tpot_ms=, e2e_ms=)")
            result = capacity(engine, traffic, slo, args.attainment,
                              progress=lambda p: print(f"rate {p['rate']:.3g} req/s: {p['slo_attainment']:.0%} met "
                                                       "the SLO"))
        else:
            bar = TokenBar()
            try:
                result = self.session.serve({}, traffic, slo, on_step=bar)
            finally:
                bar.close()
        if args.output:
            return result
        from IPython.display import display

        display(result)

    def _panel(self, args):
        from .panel import Panel, widgets_unavailable

        why = widgets_unavailable(self.shell)
        if why:
            print(f"the panel cannot render here: {why}; every other %tuner subcommand works as text")
            return None
        panel = Panel(self.session)
        from IPython.display import display

        display(panel.widget)
        return None

    def _hw(self, args):
        from ..profile.hardware import hw_table

        print(hw_table(args.device, force=args.force))

    def _history(self, args):
        if args.n < 0:
            raise ValueError(f"-n {args.n} is not allowed: give how many of the latest runs to show (0: all)")
        df = self.session.history_frame()
        if df.empty:
            print("no runs yet: %tuner run")
            return None
        from IPython.display import display

        display(fmt.frame(df.tail(args.n) if args.n else df))

    def _compare(self, args):
        if len(args.runs) < 2:
            raise ValueError(f"%tuner compare needs two runs or more, got {len(args.runs)}: e.g. %tuner compare -2 -1")
        result = compare(*(self.session.get(r) for r in args.runs))
        if args.output:
            return result
        from IPython.display import display

        display(result)
        return None

    def _tensorboard(self, args):
        if args.stop:
            if self.tensorboard is None:
                print("no TensorBoard was started from this session")
            else:
                self.tensorboard.stop()
                print(f"stopped {self.tensorboard.url}")
                self.tensorboard = None
            return None
        from ..profile.tensorboard import OFFLINE_NOTE, tensorboard

        if self.tensorboard is not None:
            self.tensorboard.stop()
        self.tensorboard = tensorboard(args.logdir, args.port)
        print(f"TensorBoard: {self.tensorboard.profiler_url()} (log dir {self.tensorboard.logdir}); "
              f"%tuner tensorboard --stop ends it\nnote: {OFFLINE_NOTE}")


    def _sweep(self, args, cell: str | None):
        from ..config import read_yaml
        from ..tune.sweep import sweep_from_spec

        if not cell or not cell.strip():
            raise ValueError("%%tuner sweep takes its space in the cell, as YAML, e.g.\n"
                             "%%tuner sweep --constraint 'tpot_ms_p99 <= 50'\nbatch_size: [1, 4, 8]\n"
                             "quant: [none, int8]")
        defaults = {"model": DEFAULT_MODEL}
        engine = self.session.engine
        if engine is not None:  # fixed knobs default to the loaded engine's
            defaults.update({k: getattr(engine.config, k) for k in ("model", "device", "dtype")})
            self.session.engine = None  # the sweep builds its own engines; free this one's memory
        result = sweep_from_spec(read_yaml(cell, "sweep cell"), {
            "objectives": args.objective, "constraints": args.constraint, "n_trials": args.n_trials,
            "sampler": args.sampler, "storage": args.storage, "study_name": args.study, "repeats": args.repeats},
            base_defaults=defaults, runs_dir=self.session.runs_dir)
        self.session.sweeps.append(result)
        if args.output:
            return result
        from IPython.display import display

        display(result)

    def _export(self, args):
        from ..tune.export import export_formats

        if args.best and args.run:
            raise ValueError("give --run or --best, not both")
        if args.best:
            if not self.session.sweeps:
                raise ValueError("no sweep yet in this session: run %%tuner sweep first, or export a run")
            source = self.session.sweeps[-1]
        else:
            source = self.session.get(args.run or "-1")
        for kind, path in export_formats(source, args.format, args.path, args.objective).items():
            print(f"{kind:7s} {path}")
