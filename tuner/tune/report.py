"""A sweep as one self-contained HTML page: the summary, the trials, the charts, the exported files."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..profile.plots import png


def _img(fig) -> str:
    return f"<img alt='' src='data:image/png;base64,{base64.b64encode(png(fig, dpi=100)).decode()}'/>"


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
    hw = result.hardware
    if hw:
        parts.append("<p>Measured on " + html.escape(", ".join(f"{k} {v}" for k, v in hw.items()
                                                                if not isinstance(v, dict))) + ".</p>")
    parts.append(f"<p>Workload: {html.escape(str(result.workload))}; fixed knobs: {html.escape(str(result.base))}."
                 "</p>")
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
    parts.append("<h2>Trials</h2>")
    parts.append(result.frame().to_html(index=False, float_format=lambda x: f"{x:.4g}", na_rep=""))
    try:
        best = result.best_config()
        parts.append("<h2>Best configuration</h2><pre>" + html.escape(
            "\n".join(f"{k}: {v}" for k, v in best.items())) + "</pre>")
    except ValueError as e:
        parts.append(f"<p>{html.escape(str(e))}</p>")
    if exports:
        parts.append("<h2>Exported</h2><ul>")
        for fmt, p in exports.items():
            rel = _rel(p, path.parent)
            parts.append(f"<li>{fmt}: <a href='{html.escape(rel)}'>{html.escape(rel)}</a></li>")
        parts.append("</ul>")
    if runs_dir is not None:
        parts.append(f"<p>Run records (tuner.run/1 JSON): <code>{html.escape(_rel(runs_dir, path.parent))}</code></p>")
    parts.append("</body></html>")
    path.write_text("".join(parts))
    return path


def _rel(p: Path, base: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(p)
