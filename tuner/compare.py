"""`Comparison`: two or more runs side by side, to read and to look at.

- `table()`: the knobs that differ and the headline metrics under headed columns (A, B, ..., and each run's
  ratio to A), in tuner.fmt's formats.
- `ops_table()` / `ops_frame()`: op-by-op time of each run and its change against A.
- `plot_steps()`: decode step latency over each run, overlaid; `plot_roofline()`: each op's roofline point in
  A and in B, an arrow from A to B.

A notebook shows all of it (text/html with the charts), and the JupyterLab extension draws the same from
`application/vnd.tuner.compare+json` (schema tuner.compare/1) in a saved notebook.
"""

from __future__ import annotations

import string

from . import fmt

SCHEMA = "tuner.compare/1"
METRICS = ("ttft_ms", "ttft_ms_p99", "tpot_ms", "tpot_ms_p99", "itl_ms_p99", "output_tok_s", "mbu", "mfu",
           "usd_per_1m_output_tokens")


class Comparison:
    MIME = "application/vnd.tuner.compare+json"

    def __init__(self, runs):
        if len(runs) < 2:
            raise ValueError(f"a comparison needs two runs or more, got {len(runs)}")
        if len(runs) > len(string.ascii_uppercase):
            raise ValueError(f"a comparison holds at most {len(string.ascii_uppercase)} runs, got {len(runs)}")
        self.runs = list(runs)
        self.names = list(string.ascii_uppercase[: len(runs)])

    # -- text --------------------------------------------------------------------------------------------

    def table(self) -> str:
        """Headed columns: A, B, ... (each with its run id) and B/A, C/A, ...: the knobs that differ, then the
        headline metrics and their ratios to A."""
        head = ["", *(f"{n} {r.run_id}" for n, r in zip(self.names, self.runs, strict=True)),
                *(f"{n}/A" for n in self.names[1:])]
        rows = [head]
        blank = [""] * (len(self.runs) - 1)
        for section in ("config", "sampling"):
            maps = [getattr(r, section) for r in self.runs]
            for k in sorted(set().union(*maps)):
                values = [m.get(k) for m in maps]
                if any(v != values[0] for v in values):
                    rows.append([k if section == "config" else f"sampling {k}", *map(str, values), *blank])
        if len(rows) == 1:
            rows.append(["knobs", *["the same"] * len(self.runs), *blank])
        rows.append([""] * len(head))
        for key in METRICS:
            values = [r.metrics.get(key) for r in self.runs]
            if all(v is None for v in values):
                continue
            x = values[0]
            ratios = [f"{y / x:.2f}x" if x and y else "" for y in values[1:]]
            rows.append([key, *(fmt.value(key, v) for v in values), *ratios])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        return "\n".join(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            .rstrip() for r in rows)

    def ops_rows(self) -> list[dict]:
        """One row per (phase, op) any run profiled: each run's time (ms; None where it did not profile the op)
        and each later run's change against A, as a fraction (+0.25: 25% slower)."""
        keys = []
        for r in self.runs:
            keys += [(o["phase"], o["op"]) for o in r.ops_records if (o["phase"], o["op"]) not in keys]
        times = [{(o["phase"], o["op"]): o["time_ms"] for o in r.ops_records} for r in self.runs]
        out = []
        for phase, op in keys:
            row = {"phase": phase, "op": op}
            for n, t in zip(self.names, times, strict=True):
                row[f"{n}_ms"] = t.get((phase, op))
            a = row["A_ms"]
            for n in self.names[1:]:
                b = row[f"{n}_ms"]
                row[f"{n}_change"] = (b - a) / a if a and b is not None else None
            out.append(row)
        return sorted(out, key=lambda r: -max(v for k, v in r.items() if k.endswith("_ms") and v is not None))

    def ops_frame(self):
        import pandas as pd

        return pd.DataFrame(self.ops_rows())

    def ops_table(self) -> str:
        rows = self.ops_rows()
        missing = [n for n, r in zip(self.names, self.runs, strict=True) if not r.ops_records]
        if not rows:
            return "no op profile in these runs: run them with profile=True (%tuner run --profile)"
        if missing:  # a column of n/a says nothing: name the runs to profile instead
            return (f"no op-by-op change: run {', '.join(missing)} has no op profile; run every compared run with "
                    "profile=True (%tuner run --profile)")
        head = ["phase", "op", *(f"{n} ms" for n in self.names), *(f"{n} vs A" for n in self.names[1:])]
        body = [[r["phase"], r["op"], *(fmt.num(r[f"{n}_ms"]) for n in self.names),
                 *(_change(r[f"{n}_change"]) for n in self.names[1:])] for r in rows]
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
        return "\n".join("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                                   enumerate(zip(x, widths, strict=True))).rstrip() for x in [head, *body])

    def __repr__(self) -> str:
        return self.table() + "\n\n" + self.ops_table()

    # -- charts ------------------------------------------------------------------------------------------

    def plot_steps(self):
        """Decode step latency over each run, overlaid (one line per run, its median dashed)."""
        from .profile.plots import compare_steps

        return compare_steps(self)

    def plot_roofline(self, b: int = 1):
        """Each op's roofline point in run A and in run `b` (index, default B), an arrow from A to B."""
        from .profile.plots import compare_roofline

        return compare_roofline(self, b)

    # -- records -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "names": self.names, "runs": [r.display_record() for r in self.runs]}

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        import base64
        import html

        parts = [f"<div class='tuner-compare'><pre>{html.escape(self.table())}</pre>",
                 f"<pre>{html.escape(self.ops_table())}</pre>"]
        try:
            from .profile.plots import png

            charts = []
            if all(len(r.timings.get("decode_step_ms") or []) > 1 for r in self.runs[:2]):
                charts.append(self.plot_steps())
            if self.runs[0].ops_records and self.runs[1].ops_records:
                charts.append(self.plot_roofline())
            for fig in charts:
                parts.append(f"<img src='data:image/png;base64,{base64.b64encode(png(fig, dpi=72)).decode()}' "
                             "style='max-width:640px'/>")
        except ImportError:  # no matplotlib: the tables alone
            pass
        parts.append("</div>")
        return {"text/plain": repr(self), "text/html": "".join(parts), self.MIME: self.to_dict()}


def _change(x) -> str:
    if x is None:
        return ""
    return ("+" if x > 0 else "") + fmt.pct(x)
