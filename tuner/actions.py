"""What a front end does, one library function per action: the CLI (`tuner ...`), the magics (`%tuner ...`)
and the panel all call these, and add only their own parsing and display.

    parse_knobs(["batch_size=8", "top_p=0.9", "prompt_len=256"])  -> engine, sampling, workload knobs
    run(engine, sampling_knobs, workload_knobs, prompts=None, profile=False, on_step=None)  -> RunResult
    load_progress(desc), TokenBar()  -> progress bars for loading weights and for generating

The hardware table is tuner.profile.hardware.hw_table, a sweep from a document with flags laid over it
tuner.tune.sweep.sweep_from_spec, and an export in one format or all tuner.tune.export.export_formats.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable

from .knobs import lookup, shared_names

# A run's output length is its workload's output_len; `max_new_tokens=` is read as that.
RUN_ALIASES = {"max_new_tokens": "output_len"}


def parse_knobs(tokens: list[str]) -> tuple[dict, dict, dict]:
    """`key=value` tokens -> (engine knobs, sampling knobs, workload knobs), each checked against the registry.

    Raises ValueError with one line naming the problem and what is allowed."""
    groups: dict[str, dict] = {"engine": {}, "sampling": {}, "workload": {}}
    for tok in tokens:
        if "=" not in tok:
            raise ValueError(f"{tok!r} is not a knob setting: write key=value, e.g. batch_size=8")
        key, value = tok.split("=", 1)
        key = key.strip().replace("-", "_")
        found = lookup(RUN_ALIASES.get(key, key))
        if found is None:
            close = difflib.get_close_matches(key, shared_names(), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"unknown knob {key!r}{hint}: knobs are {', '.join(shared_names())}")
        group, name, knob = found
        groups[group][name] = knob.parse(value)
    return groups["engine"], groups["sampling"], groups["workload"]


def run(engine, sampling_knobs: dict | None = None, workload_knobs: dict | None = None,
        prompts: list[str] | None = None, profile: bool | str = False,
        on_step: Callable[[dict], bool | None] | None = None, logdir=None):
    """Generate on `engine` for text `prompts`, or else for the synthetic workload of `workload_knobs` (registry
    defaults for the rest), with output_len tokens per prompt; returns the RunResult."""
    from .config import SamplingParams
    from .engine.workload import Workload

    workload = Workload.from_knobs(workload_knobs or {})
    sampling = SamplingParams(max_new_tokens=workload.output_len, **(sampling_knobs or {}))
    return engine.generate(prompts or workload, sampling, profile=profile, on_step=on_step, logdir=logdir)


def load_progress(desc: str) -> Callable[[int, int], None]:
    """A progress bar of layers loaded (on stderr), as Engine(progress=...) reports them."""
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit="layer", leave=False, disable=None, file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()
        if done == total:
            bar.close()

    return update


class TokenBar:
    """A progress bar of tokens generated (on stderr), fed by generate()'s on_step events: `on_step=bar`."""

    def __init__(self, disable: bool | None = None):
        from tqdm.auto import tqdm

        self.bar = tqdm(desc="generating", unit="tok", leave=False, disable=disable, file=sys.stderr)

    def __call__(self, event: dict) -> None:
        self.bar.total = event["total_tokens"]
        self.bar.n = event["done_tokens"]
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


# -- serving flags, shared by `tuner serve-bench` and `%tuner serve` ---------------------------------------

def rate_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate: give requests per second, or inf") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: the rate must be > 0 (inf: all at once)")
    return value


def length_arg(text: str) -> int | tuple[int, int]:
    parts = text.replace(",", "-").split("-")
    if not all(p.strip().isdigit() for p in parts) or len(parts) > 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not a length: give N or LOW-HIGH")
    values = [int(p) for p in parts]
    return values[0] if len(values) == 1 else (values[0], values[1])


def parse_slo(items: list[str] | None) -> dict:
    """--slo KEY=MS flags -> {key: ms} (checked by tuner.serve.metrics.check_slo)."""
    slo = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            slo[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--slo {item!r} is not allowed: write KEY=MS, e.g. ttft_ms=500")
    return slo


def add_traffic_flags(group) -> None:
    """The traffic, SLO and capacity flags of a serving benchmark (tuner.Traffic's fields)."""
    group.add_argument("--rate", type=rate_arg, default=float("inf"),
                       help="requests per second, or inf: all at once (default inf)")
    group.add_argument("--num-prompts", type=int, default=64, help="requests (default 64)")
    group.add_argument("--prompt-len", type=length_arg, default=128,
                       help="prompt tokens: N, or a range LOW-HIGH drawn uniformly (default 128)")
    group.add_argument("--output-len", type=length_arg, default=64, help="output tokens: N or LOW-HIGH (default 64)")
    group.add_argument("--burstiness", type=float, default=1.0,
                       help="gamma shape of the gaps between arrivals: 1 Poisson, < 1 burstier (default 1)")
    group.add_argument("--max-concurrency", type=int, default=0, help="requests in flight at most; 0: no limit")
    group.add_argument("--prefix-len", type=int, default=0,
                       help="tokens of a system prompt shared by --prefix-fraction of the requests")
    group.add_argument("--prefix-fraction", type=float, default=0.0, help="share of requests with the shared prefix")
    group.add_argument("--trace", default=None,
                       help="a JSONL trace to replay (arrival_s, prompt_len or prompt, output_len per line)")
    group.add_argument("--traffic-seed", type=int, default=0, help="seed of the arrivals and prompts (default 0)")
    group.add_argument("--slo", action="append", default=None, metavar="KEY=MS",
                       help="a per-request limit: ttft_ms=500, tpot_ms=50 or e2e_ms=... (repeat)")
    group.add_argument("--capacity", action="store_true",
                       help="find the highest rate meeting the SLO (a rate ladder from --rate, then bisection)")
    group.add_argument("--attainment", type=float, default=0.9,
                       help="with --capacity: the share of requests that must meet the SLO (default 0.9)")


def traffic_of(args):
    """The tuner.Traffic of parsed add_traffic_flags flags."""
    from .serve.traffic import Traffic

    return Traffic(rate=args.rate, num_prompts=args.num_prompts, prompt_len=args.prompt_len,
                   output_len=args.output_len, burstiness=args.burstiness, max_concurrency=args.max_concurrency,
                   prefix_len=args.prefix_len, prefix_fraction=args.prefix_fraction, trace=args.trace,
                   seed=args.traffic_seed)
