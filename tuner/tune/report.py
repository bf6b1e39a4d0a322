"""A sweep as one self-contained HTML page: the summary, the trials, the charts, the exported files."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from .. import fmt
from ..profile.plots import png


def _img(fig) -> str:
    return _png(png(fig, dpi=100))


def _png(data: bytes) -> str:
    return f"<img alt='' src='data:image/png;base64,{base64.b64encode(data).decode()}'/>"


def write_report(result, path: str | Path, exports: dict[str, Path] | None = None,
                 runs_dir: Path | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             f"<title>tuner sweep {html.escape(result.study_name)}</title>",
             "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
             "th{background:#f3f3f3}pre{background:#f7f7f7;padding:1em}img{max-width:100%;margin:.5em 0}</style>",
             "</head><body>", f"<h1>tuner sweep <code>{html.escape(result.study_name)}</code></h1>",
             f"<pre>{html.escape(result.summary())}</pre>"]
    if result.hardware:
        parts.append("<h2>Measured on</h2>" + _facts(result.hardware))
    parts.append("<h2>Workload</h2>" + _facts(result.workload))
    parts.append("<h2>Fixed knobs</h2>" + _facts(result.base))
    parts.append("<h2>Charts</h2>")
    charts = [("Pareto", result.plot_pareto), ("knob effects", result.plot_effects),
              ("parallel coordinates", result.plot_parallel)]
    if any(t["metrics"].get("kl_mean") is not None for t in result.trials):
        charts.insert(0, ("speed, cost and quality", result.plot_triangle))
    for name, fn in charts:
        try:
            parts.append(f"<h3>{name}</h3>" + _img(fn()))
        except ValueError as e:
            parts.append(f"<p>{name}: {html.escape(str(e))}</p>")
    parts.append(f"<h2>Optuna's views ({html.escape(result.objectives[0].metric)})</h2>")
    try:
        from .plots import optuna_views

        for name, view in optuna_views(result):
            parts.append(f"<h3>{name}</h3>" + (_png(view) if isinstance(view, bytes) else
                                               f"<p>{html.escape(view)}</p>"))
    except ImportError as e:  # optuna.visualization.matplotlib needs matplotlib (tuner[tune] brings it)
        parts.append(f"<p>not drawn: {html.escape(str(e))}</p>")
    parts.append("<h2>Trials</h2>")
    parts.append(fmt.frame(result.frame()).to_html(index=False))
    try:
        best = result.best_config()
        parts.append("<h2>Best configuration</h2><pre>" + html.escape(
            "\n".join(f"{k}: {v}" for k, v in best.items())) + "</pre>")
    except ValueError as e:
        parts.append(f"<p>{html.escape(str(e))}</p>")
    if exports:
        parts.append("<h2>Exported</h2><ul>")
        for kind, p in exports.items():
            rel = _rel(p, path.parent)
            parts.append(f"<li>{kind}: <a href='{html.escape(rel)}'>{html.escape(rel)}</a></li>")
        parts.append("</ul>")
    if runs_dir is not None:
        parts.append(f"<p>Run records (tuner.run/1 JSON): <code>{html.escape(_rel(runs_dir, path.parent))}</code></p>")
    parts.append("</body></html>")
    path.write_text("".join(parts))
    return path


def _facts(d: dict) -> str:
    """A record's mapping as a two-column table: unset values left out, nested ones as key=value, numbers in
    tuner.fmt's formats (bytes in MiB/GiB), never a Python repr."""
    rows = []
    for k, v in d.items():
        if v is None or v == {} or v == []:
            continue
        if isinstance(v, dict):
            v = ", ".join(f"{a}={fmt.value(a, b)}" for a, b in v.items() if b is not None)
        elif isinstance(v, (list, tuple)):
            v = ", ".join(fmt.value(k, x) for x in v)
        else:
            v = fmt.value(k, v)
        rows.append(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(v)}</td></tr>")
    return "<table class='facts'>" + "".join(rows) + "</table>"


def _rel(p: Path, base: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(p)
