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
        ax.plot([a for a, _, _ in front], [b for _, b, _ in front], color=COLORS["front"], lw=1.2, marker="D",
                ms=8, mfc="none", mew=1.3, label=(f"Pareto front ({len(front)})" if len(result.objectives) > 1
                                                   else "best"))
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


def ordered(values, listed=None) -> list:
    """A knob's distinct values in reading order: numbers by value (1, 2, 4, 8, not as first met), categories
    in the order the space lists them (`listed`), else as first met."""
    distinct = list(dict.fromkeys(values))
    if distinct and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in distinct):
        return sorted(distinct)
    if isinstance(listed, (list, tuple)):
        return [v for v in listed if v in distinct] + [v for v in distinct if v not in listed]
    return distinct


@styled
def effects(result, metric: str | None = None):
    """Each knob's values against `metric` (default: the first objective), feasible trials coloured; numeric
    knobs in numeric order."""
    metric = metric or result.objectives[0].metric
    knobs = list(result.space)
    fig, axes = subplots(figsize=(3.2 * len(knobs), 3.4), ncols=len(knobs), squeeze=False)
    for ax, k in zip(axes[0], knobs, strict=True):
        order = ordered((t["params"][k] for t in result.trials if k in t["params"]), result.space.get(k))
        where = {v: i for i, v in enumerate(order)}
        for kind in ("failed", "infeasible", "feasible"):
            pts = [(where[t["params"][k]], _metric(t, metric, result)) for t in result.trials
                   if _kind(t) == kind and k in t["params"]]
            pts = [(a, b) for a, b in pts if b is not None and kind != "failed"]
            if pts:
                ax.scatter(*zip(*pts, strict=True), color=COLORS[kind], s=30, alpha=0.8, label=kind)
        ax.set_xticks(range(len(order)), [str(v) for v in order])
        ax.set(xlabel=k, ylabel=metric if ax is axes[0][0] else "", xlim=(-0.5, len(order) - 0.5))
        ax.tick_params(axis="x", labelrotation=30 if len(order) > 4 else 0, labelsize=8)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"How each knob moves {metric}", fontsize=10)
    fig.tight_layout()
    return fig


@styled
def parallel(result):
    """Parallel coordinates over the knobs and the objectives: each axis is scaled to its own range and carries
    its own ticks (a numeric axis its low, middle and high values, a category axis every category)."""
    from .. import fmt

    axes_names = list(result.space) + [o.metric for o in result.objectives]
    rows = [t for t in result.trials if not t["error"] and t.get("duplicate_of") is None]
    if not rows:
        raise ValueError("no completed trial to draw")
    cols, ticks = [], []
    for name in axes_names:
        vals = [t["params"].get(name) if name in result.space else _metric(t, name, result) for t in rows]
        known = [v for v in vals if v is not None]
        if known and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in known):
            lo, hi = min(known), max(known)
            span = hi - lo
            cols.append([None if v is None else (v - lo) / span if span else 0.5 for v in vals])
            distinct = sorted(set(known))
            marks = distinct if name in result.space and len(distinct) <= 8 else [lo, (lo + hi) / 2, hi] if span \
                else [lo]
            ticks.append([((m - lo) / span if span else 0.5, fmt.value(name, m)) for m in marks])
        else:
            listed = result.space.get(name)
            cats = ordered((str(v) for v in vals), [str(v) for v in listed] if isinstance(listed, list) else None)
            cols.append([cats.index(str(v)) / max(1, len(cats) - 1) for v in vals])
            ticks.append([(i / max(1, len(cats) - 1), c) for i, c in enumerate(cats)])
    fig, ax = subplots(figsize=(1.9 * len(axes_names) + 2, 4.4))
    for i, t in enumerate(rows):
        ys = [c[i] for c in cols]
        ax.plot(range(len(axes_names)), [0.5 if y is None else y for y in ys], lw=1.1, alpha=0.75,
                color=COLORS["feasible" if t["feasible"] else "infeasible"], zorder=2)
    for j, marks in enumerate(ticks):
        ax.axvline(j, color="#444444", lw=0.8, zorder=1)
        for y, label in marks:
            ax.plot([j - 0.03, j], [y, y], color="#444444", lw=0.8)
            ax.annotate(label, (j, y), xytext=(-5, 0), textcoords="offset points", ha="right", va="center",
                        fontsize=7, bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.set_xticks(range(len(axes_names)), [n.replace("_", " ") for n in axes_names], fontsize=8)
    ax.set(yticks=[], xlim=(-0.6, len(axes_names) - 0.6), ylim=(-0.06, 1.06),
           title="Trials across knobs and objectives (green: feasible, orange: infeasible)")
    ax.grid(False)
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


# Optuna's own views of a study (optuna.visualization.matplotlib), drawn on the sweep's trials: (title, function)
OPTUNA_VIEWS = (("parameter importance", "plot_param_importances"), ("slice", "plot_slice"),
                ("contour", "plot_contour"), ("parallel coordinates (Optuna)", "plot_parallel_coordinate"))


def optuna_study(result):
    """An in-memory Optuna study holding the record's measured trials (same params, distributions and values),
    so Optuna's own charts draw a sweep record on any machine, its storage reachable or not."""
    import optuna

    from .space import Space

    dists = {d.name: d.distribution() for d in Space(result.space).dims}
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(directions=[o.optuna_direction for o in result.objectives],
                                    study_name=result.study_name)
    finally:
        optuna.logging.set_verbosity(level)
    for t in result.trials:
        if t["error"] or t.get("duplicate_of") is not None or t["values"] is None:
            continue
        study.add_trial(optuna.trial.create_trial(
            params={k: v for k, v in t["params"].items() if k in dists},
            distributions={k: dists[k] for k in t["params"] if k in dists}, values=t["values"]))
    return study


def optuna_views(result, objective: int = 0) -> list[tuple[str, bytes | str]]:
    """Optuna's importance, slice, contour and parallel-coordinate charts of the sweep for one objective, each as
    PNG bytes or, where Optuna cannot draw it (one knob has no contour), the reason. Drawn inside a style context
    and closed after: the session's matplotlib settings and pyplot's figures are as they were."""
    import warnings

    import matplotlib
    import numpy as np
    import optuna.visualization.matplotlib as ov
    from matplotlib import pyplot as plt

    from ..profile.plots import png

    study = optuna_study(result)
    metric = result.objectives[objective].metric
    target = {"target": lambda t: t.values[objective], "target_name": metric} if len(result.objectives) > 1 else \
        {"target_name": metric}
    out = []
    for title, name in OPTUNA_VIEWS:
        if name == "plot_contour" and len(result.space) < 2:
            out.append((title, "needs two knobs or more"))
            continue
        before = set(plt.get_fignums())
        try:
            with matplotlib.rc_context(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna.visualization.matplotlib is "experimental"
                axes = getattr(ov, name)(study, **target)
                fig = np.ravel(axes)[0].figure
                fig.suptitle(f"{title}: {metric}", fontsize=10)
                out.append((title, png(fig)))
        except Exception as e:  # noqa: BLE001 - the report says why this one chart is missing, the rest are drawn
            out.append((title, f"Optuna could not draw it: {type(e).__name__}: {e}"))
        finally:
            for n in set(plt.get_fignums()) - before:
                plt.close(n)
    return out
