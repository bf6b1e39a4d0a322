"""Plots of a sweep (matplotlib + seaborn, no pyplot): Pareto front, knob effects, parallel coordinates."""

from __future__ import annotations

from ..profile.plots import styled, subplots

COLORS = {"feasible": "#2ca02c", "infeasible": "#ff7f0e", "failed": "#7f7f7f", "front": "#1f77b4"}


def _kind(t: dict) -> str:
    return "failed" if t["error"] else "feasible" if t["feasible"] else "infeasible"


def _metric(t: dict, name: str, result) -> float | None:
    for i, o in enumerate(result.objectives):
        if o.metric == name and t["values"] is not None and not t["error"]:
            return t["values"][i]
    return t["metrics"].get(name)


@styled
def pareto(result, x: str | None = None, y: str | None = None):
    objs = [o.metric for o in result.objectives]
    x = x or (objs[1] if len(objs) > 1 else "tpot_ms_p99" if objs[0] != "tpot_ms_p99" else "output_tok_s")
    y = y or objs[0]
    fig, ax = subplots(figsize=(6.5, 4.5))
    shown = 0
    for kind in ("failed", "infeasible", "feasible"):
        pts = [(_metric(t, x, result), _metric(t, y, result)) for t in result.trials
               if _kind(t) == kind and t.get("duplicate_of") is None]
        pts = [(a, b) for a, b in pts if a is not None and b is not None]
        if pts:
            ax.scatter(*zip(*pts, strict=True), s=36, color=COLORS[kind], label=f"{kind} ({len(pts)})",
                       alpha=0.85, edgecolor="white", linewidth=0.5)
            shown += len(pts)
    front = [(_metric(t, x, result), _metric(t, y, result), t["number"]) for t in result.pareto]
    front = sorted((a, b, n) for a, b, n in front if a is not None and b is not None)
    if front:
        ax.plot([a for a, _, _ in front], [b for _, b, _ in front], color=COLORS["front"], lw=1.2,
                label="Pareto front" if len(result.objectives) > 1 else "best")
        for a, b, n in front:
            ax.annotate(f"#{n}", (a, b), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if not shown:
        raise ValueError(f"no trial has both {x} and {y}")
    for c in result.constraints:
        if c.metric == x:
            ax.axvline(c.bound, color="#d62728", ls="--", lw=0.8, label=str(c))
        if c.metric == y:
            ax.axhline(c.bound, color="#d62728", ls="--", lw=0.8, label=str(c))
    ax.set(xlabel=x, ylabel=y, title=f"Sweep {result.study_name}: {y} against {x}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@styled
def effects(result, metric: str | None = None):
    """Each knob's values against `metric` (default: the first objective), feasible trials coloured."""
    metric = metric or result.objectives[0].metric
    knobs = list(result.space)
    fig, axes = subplots(figsize=(3.2 * len(knobs), 3.4), ncols=len(knobs), squeeze=False)
    for ax, k in zip(axes[0], knobs, strict=True):
        for kind in ("failed", "infeasible", "feasible"):
            pts = [(str(t["params"].get(k)), _metric(t, metric, result)) for t in result.trials
                   if _kind(t) == kind and k in t["params"]]
            pts = [(a, b) for a, b in pts if b is not None and kind != "failed"]
            if pts:
                ax.scatter(*zip(*pts, strict=True), color=COLORS[kind], s=30, alpha=0.8, label=kind)
        ax.set(xlabel=k, ylabel=metric if ax is axes[0][0] else "")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"How each knob moves {metric}", fontsize=10)
    fig.tight_layout()
    return fig


@styled
def parallel(result):
    """Parallel coordinates over the knobs (categories spread evenly) and the objectives (scaled 0..1)."""
    axes_names = list(result.space) + [o.metric for o in result.objectives]
    rows = [t for t in result.trials if not t["error"] and t.get("duplicate_of") is None]
    if not rows:
        raise ValueError("no completed trial to draw")
    cols = []
    for name in axes_names:
        vals = [t["params"].get(name) if name in result.space else _metric(t, name, result) for t in rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals if v is not None) and any(
                v is not None for v in vals):
            nums = [v for v in vals if v is not None]
            lo, hi = min(nums), max(nums)
            cols.append([None if v is None else (v - lo) / (hi - lo) if hi > lo else 0.5 for v in vals])
        else:
            cats = sorted({str(v) for v in vals}, key=str)
            cols.append([cats.index(str(v)) / max(1, len(cats) - 1) for v in vals])
    fig, ax = subplots(figsize=(1.6 * len(axes_names) + 2, 4))
    for i, t in enumerate(rows):
        ys = [c[i] for c in cols]
        ax.plot(range(len(axes_names)), [0.5 if y is None else y for y in ys], lw=1.1, alpha=0.75,
                color=COLORS["feasible" if t["feasible"] else "infeasible"])
    ax.set_xticks(range(len(axes_names)), axes_names, rotation=20, fontsize=8)
    ax.set(yticks=[], title="Trials across knobs and objectives (green: feasible)")
    fig.tight_layout()
    return fig


@styled
def triangle(result, speed: str, cost: str, quality: str):
    """Speed (x) against cost (y) for every completed trial, coloured by quality (log scale: KL spans decades);
    the trials of the three-way Pareto set (SweepResult.triangle) ringed and numbered."""
    from matplotlib.colors import LogNorm

    rows = [t for t in result.trials if not t["error"] and t.get("duplicate_of") is None
            and all(t["metrics"].get(m) is not None for m in (speed, cost, quality))]
    if not rows:
        raise ValueError(f"no trial has {speed}, {cost} and {quality}: a sweep measures quality when an objective "
                         "or constraint names it")
    floor = 1e-6  # the reference itself has KL 0: drawn at the bottom of the scale
    q = [max(t["metrics"][quality], floor) for t in rows]
    fig, ax = subplots(figsize=(7, 4.8))
    norm = LogNorm(vmin=min(q), vmax=max(max(q), min(q) * 10))
    pts = ax.scatter([t["metrics"][speed] for t in rows], [t["metrics"][cost] for t in rows], c=q, cmap="viridis_r",
                     norm=norm, s=[46 if t["feasible"] else 22 for t in rows], edgecolor="white", linewidth=0.5,
                     marker="o")
    best = result.triangle(speed, cost, quality)
    for t in best:
        x, y = t["metrics"][speed], t["metrics"][cost]
        ax.scatter([x], [y], s=130, facecolor="none", edgecolor="#d62728", linewidth=1.3)
        ax.annotate(f"#{t['number']}", (x, y), fontsize=7, xytext=(5, 4), textcoords="offset points")
    bar = fig.colorbar(pts, ax=ax)
    bar.set_label(f"{quality} (lower is closer to float32)")
    for c in result.constraints:
        if c.metric == speed:
            ax.axvline(c.bound, color="#d62728", ls="--", lw=0.8, label=str(c))
        if c.metric == cost:
            ax.axhline(c.bound, color="#d62728", ls="--", lw=0.8, label=str(c))
    ax.scatter([], [], s=130, facecolor="none", edgecolor="#d62728", label=f"Pareto set over all three ({len(best)})")
    ax.set(xlabel=f"{speed} (speed)", ylabel=f"{cost} (cost)",
           title=f"Speed, cost and quality: {len(rows)} trials (small dots: infeasible)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
