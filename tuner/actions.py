"""What a front end does, one library function per action: the CLI (`tuner ...`), the magics (`%tuner ...`)
and the panel all call these, and add only their own parsing and display.

    parse_knobs(["batch_size=8", "top_p=0.9", "prompt_len=256"])  -> engine, sampling, workload knobs
    run(engine, sampling_knobs, workload_knobs, prompts=None, profile=False, on_step=None)  -> RunResult
    load_progress(desc), TokenBar()  -> progress bars for loading weights and for generating

The hardware table is tuner.profile.hardware.hw_table, a sweep from a document with flags laid over it
tuner.tune.sweep.sweep_from_spec, and an export in one format or all tuner.tune.export.export_formats.
"""

from __future__ import annotations

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
        prompts: list[str] | None = None, profile: bool = False, on_step: Callable[[dict], bool | None] | None = None,
        logdir=None):
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
