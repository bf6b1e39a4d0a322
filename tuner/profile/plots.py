"""Plots of a profiled run (matplotlib + seaborn, imported on first use). Each returns a Figure."""

from __future__ import annotations

import functools

from .. import fmt

BOUND_COLORS = {"memory": "#1f77b4", "compute": "#d62728", "overhead": "#7f7f7f"}


def subplots(figsize, nrows: int = 1, ncols: int = 1, **kw):
    """(Figure, axes) made without pyplot: safe from a worker thread, not left open in pyplot's registry, and
    shown by a notebook when a cell returns the figure (it carries _repr_png_)."""
    fig = figure(figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def figure(figsize):
    """An empty matplotlib Figure (no pyplot) that notebooks display through _repr_png_."""
    from matplotlib.figure import Figure

    class TunerFigure(Figure):
        def _repr_png_(self):
            return png(self)

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = TunerFigure(figsize=figsize)
    FigureCanvasAgg(fig)  # a renderer to measure text with (label placement), still no pyplot
    return fig


def styled(plot):
    """Draw `plot` in seaborn's whitegrid look inside a matplotlib style context: the session's own settings
    (rcParams) are the same afterwards."""

    @functools.wraps(plot)
    def draw(*args, **kwargs):
        import matplotlib
        import seaborn as sns

        with matplotlib.rc_context({**sns.axes_style("whitegrid"), **sns.plotting_context("notebook")}):
            return plot(*args, **kwargs)

    return draw


def png(fig, dpi: int = 90) -> bytes:
    """A figure as PNG bytes."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _ops(result, phase: str | None):
    df = result.ops
    if df.empty:
        raise ValueError("this run has no op profile: run generate(..., profile=True)")
    if phase is not None:
        if phase not in set(df.phase):
            raise ValueError(f"phase={phase!r} is not in this run: use one of {sorted(set(df.phase))}")
        df = df[df.phase == phase]
    return df


def tick(v: float) -> str:
    """An axis tick: the shortest exact decimal, never scientific notation (0.01, 1, 30.5, 1000)."""
    import numpy as np

    return np.format_float_positional(float(f"{v:.3g}"), trim="-")


def si(v: float, unit: str) -> str:
    """A value with an SI prefix and its unit, as axis ticks and ceilings read: 30.5 GB/s, 1.2 TFLOP/s, 40 MFLOP/s."""
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{tick(v / scale)} {prefix}{unit}"
    return f"{tick(v)} {unit}"


LABELLED = 6  # ops named on the roofline: the ones that take most time; the rest are listed under it


def _place_labels(ax, points: list[tuple[float, float, str]], obstacles: list) -> list:
    """Annotate each (x, y, text) at the first offset around its point whose box overlaps no label placed before
    it and no obstacle (display-space boxes: the ceilings' labels, the points), measured with the figure's
    renderer; far offsets get a leader line. A label that fits nowhere is left for the list under the chart."""
    renderer = ax.figure.canvas.get_renderer()
    near = [(6, 5), (6, -12), (-6, 5), (-6, -12), (8, 16), (8, -22), (-8, 16), (-8, -22)]
    far = [(dx * r, dy * r) for r in (30, 45, 60) for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1.4, 0),
                                                                  (-1.4, 0), (0, 1), (0, -1))]
    inside = ax.get_window_extent(renderer)
    placed, boxes = [], list(obstacles)
    for x, y, text in points:
        for dx, dy in near + far:
            leader = {"arrowstyle": "-", "lw": 0.5, "color": "#555555"} if (dx, dy) in far else None
            a = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7,
                            ha="left" if dx >= 0 else "right", va="bottom" if dy >= 0 else "top", arrowprops=leader,
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
            box = a.get_window_extent(renderer).expanded(1.02, 1.08)
            fits = inside.x0 <= box.x0 and box.x1 <= inside.x1 and inside.y0 <= box.y0 and box.y1 <= inside.y1
            if fits and not any(box.overlaps(b) for b in boxes):
                placed.append(a)
                boxes.append(box)
                break
            a.remove()
    return placed


@styled
def roofline(result, phase: str | None = None, ax=None):
    """Ops as points (arithmetic intensity, achieved FLOP/s) on log-log axes under the measured ceilings
    (bandwidth slope and matmul roof, their values written on them), coloured by their bound; prefill circles,
    decode triangles. The LABELLED ops that take most time are named, with labels that never overlap; the rest
    are listed under the chart (fig.tuner_unlabelled)."""
    import numpy as np
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    df = _ops(result, phase)
    df = df[(df.flops > 0) & (df.time_ms > 0)]
    hw = result.hardware
    bw, peak = hw["bandwidth_gbs"] * 1e9, hw["matmul_tflops"] * 1e12
    fig, ax = (ax.figure, ax) if ax is not None else subplots(figsize=(8, 5.5))
    ridge = peak / bw
    lo = max(min(df.intensity.min(), ridge) / 10, 1e-3)
    hi = max(df.intensity.max(), ridge) * 10
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    ax.plot(x, np.minimum(x * bw, peak), color="black", lw=1.5, zorder=2)
    ax.axvline(ridge, color="black", lw=0.8, ls=":", zorder=1)
    markers = {"prefill": "o", "decode": "^"}
    flops = df.achieved_tflops * 1e12
    for (ph, bound), g in df.groupby(["phase", "bound"]):
        ax.scatter(g.intensity, g.achieved_tflops * 1e12, s=60, marker=markers.get(ph, "o"),
                   color=BOUND_COLORS.get(bound, "C0"), edgecolor="white", zorder=3)
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(min(flops.min(), lo * bw) / 3, peak * 3),
           xlabel="arithmetic intensity (FLOP / byte, analytic)", ylabel="achieved FLOP/s",
           title=f"Roofline: {result.config['model']} on {hw.get('name')}")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: tick(v)))
    ax.yaxis.set_major_locator(LogLocator(base=10))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v, "FLOP/s")))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    handles = [Line2D([], [], color="black", lw=1.5, label="measured ceilings")]
    handles += [Line2D([], [], ls="", marker=m, color="#555555", label=ph) for ph, m in markers.items()
                if ph in set(df.phase)]
    handles += [Line2D([], [], ls="", marker="s", color=c, label=f"{b}-bound") for b, c in BOUND_COLORS.items()
                if b in set(df.bound)]
    legend = ax.legend(handles=handles, fontsize=8, loc="lower right")
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room under the axes for the list of unlabelled ops
    ceilings = [
        ax.annotate(f"memory {si(bw, 'B/s')}", (lo * 1.3, lo * 1.3 * bw), fontsize=8, xytext=(0, 8),
                    textcoords="offset points", rotation=0),
        ax.annotate(f"compute {si(peak, 'FLOP/s')}", (hi / 1.3, peak), fontsize=8, ha="right", xytext=(0, 6),
                    textcoords="offset points"),
        ax.annotate(f"ridge {tick(ridge)} FLOP/B", (ridge, 0.5), xycoords=("data", "axes fraction"), fontsize=7,
                    xytext=(-3, 0), textcoords="offset points", rotation=90, ha="right", va="center"),
    ]
    renderer = fig.canvas.get_renderer()
    obstacles = [a.get_window_extent(renderer) for a in ceilings] + [legend.get_window_extent(renderer)]
    for px, py in zip(df.intensity, flops, strict=True):  # every point: a label must not hide one
        cx, cy = ax.transData.transform((px, py))
        obstacles.append(type(obstacles[0]).from_bounds(cx - 5, cy - 5, 10, 10))
    top = df.sort_values("time_ms", ascending=False)
    named = _place_labels(ax, [(r.intensity, r.achieved_tflops * 1e12, f"{r.op} ({r.phase})")
                               for r in top.head(LABELLED).itertuples()], obstacles)
    shown = {a.get_text() for a in named}
    fig.tuner_labels = named
    fig.tuner_unlabelled = [f"{r.op} ({r.phase}) {fmt.num(r.time_ms)} ms" for r in top.itertuples()
                            if f"{r.op} ({r.phase})" not in shown]
    if fig.tuner_unlabelled:
        rest = fig.tuner_unlabelled
        fig.text(0.01, 0.005, "not labelled, by time: " + ", ".join(rest[:10]) + (" ..." if len(rest) > 10 else ""),
                 fontsize=6.5, wrap=True, va="bottom")
    return fig


@styled
def time_breakdown(result, ax=None):
    """Time per op and phase as horizontal bars, coloured by bound."""
    df = _ops(result, None).copy()
    df["label"] = df.phase + ": " + df.op
    df = df.sort_values("time_ms", ascending=True)
    fig, ax = (ax.figure, ax) if ax is not None else subplots(figsize=(8, max(3, 0.28 * len(df))))
    ax.barh(df.label, df.time_ms, color=[BOUND_COLORS.get(b, "C0") for b in df.bound])
    total = df.groupby("phase").time_ms.transform("sum")
    for y, (t, share) in enumerate(zip(df.time_ms, df.time_ms / total, strict=True)):
        ax.text(t, y, f" {share:.0%}", va="center", fontsize=7)
    ax.set(xlabel="time (ms), share of its phase", ylabel="", title="Where the time goes")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=f"{b}-bound") for b, c in BOUND_COLORS.items()], fontsize=8,
              loc="lower right")
    fig.tight_layout()
    return fig


@styled
def step_latency(result, ax=None):
    """Decode step latency over the run (ms per step), with its median."""
    import numpy as np

    steps = result.timings.get("decode_step_ms") or []
    if not steps:
        raise ValueError("this run has no decode steps")
    fig, ax = (ax.figure, ax) if ax is not None else subplots(figsize=(8, 3.5))
    ax.plot(np.arange(1, len(steps) + 1), steps, lw=1.2, color="#1f77b4", label="decode step")
    med = float(np.median(steps))
    ax.axhline(med, color="black", lw=0.8, ls="--", label=f"median {med:.2f} ms")
    ax.set(xlabel="decode step", ylabel="ms", title="Per-step latency", ylim=(0, max(steps) * 1.1))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


@styled
def compare_steps(comparison):
    """Decode step latency over each run of a tuner.compare.Comparison, overlaid, each median dashed."""
    import numpy as np

    fig, ax = subplots(figsize=(8, 3.6))
    drawn = 0
    for i, (name, r) in enumerate(zip(comparison.names, comparison.runs, strict=True)):
        steps = r.timings.get("decode_step_ms") or []
        if not steps:
            continue
        color = RUN_COLORS[i % len(RUN_COLORS)]
        med = float(np.median(steps))
        ax.plot(np.arange(1, len(steps) + 1), steps, lw=1.2, color=color,
                label=f"{name} {r.run_id}: median {fmt.num(med)} ms")
        ax.axhline(med, color=color, lw=0.8, ls="--")
        drawn += 1
    if not drawn:
        raise ValueError("none of these runs has decode steps")
    ax.set(xlabel="decode step", ylabel="ms", title="Per-step latency, run against run", ylim=(0, None))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@styled
def compare_roofline(comparison, b: int = 1):
    """Each (phase, op) profiled in both run A and run `b`: its point in A (hollow) and in B (filled), an arrow from
    A to B, under A's measured ceilings; the ops that moved most are named."""
    import numpy as np
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, NullFormatter

    a_run, b_run = comparison.runs[0], comparison.runs[b]
    if not a_run.ops_records or not b_run.ops_records:
        raise ValueError("both runs need an op profile: run them with profile=True")
    ops_b = {(o["phase"], o["op"]): o for o in b_run.ops_records}
    pairs = [(o, ops_b[o["phase"], o["op"]]) for o in a_run.ops_records
             if (o["phase"], o["op"]) in ops_b and o["flops"] > 0 and ops_b[o["phase"], o["op"]]["flops"] > 0
             and o["time_ms"] > 0 and ops_b[o["phase"], o["op"]]["time_ms"] > 0]
    if not pairs:
        raise ValueError("the two runs share no op with measurable work")
    hw = a_run.hardware
    bw, peak = hw["bandwidth_gbs"] * 1e9, hw["matmul_tflops"] * 1e12
    xs = [o["intensity"] for p in pairs for o in p]
    ys = [o["achieved_tflops"] * 1e12 for p in pairs for o in p]
    lo, hi = max(min(min(xs), peak / bw) / 10, 1e-3), max(max(xs), peak / bw) * 10
    fig, ax = subplots(figsize=(8, 5.5))
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    ax.plot(x, np.minimum(x * bw, peak), color="black", lw=1.5)
    markers = {"prefill": "o", "decode": "^"}
    for oa, ob in pairs:
        m = markers.get(oa["phase"], "o")
        pa, pb = (oa["intensity"], oa["achieved_tflops"] * 1e12), (ob["intensity"], ob["achieved_tflops"] * 1e12)
        ax.scatter(*pa, s=55, marker=m, facecolor="none", edgecolor=BOUND_COLORS.get(oa["bound"], "C0"), zorder=3)
        ax.scatter(*pb, s=55, marker=m, color=BOUND_COLORS.get(ob["bound"], "C0"), edgecolor="white", zorder=3)
        ax.annotate("", pb, pa, arrowprops={"arrowstyle": "->", "color": "#555555", "lw": 0.8})
    moved = sorted(pairs, key=lambda p: -abs(p[1]["time_ms"] - p[0]["time_ms"]))[:5]
    for oa, ob in moved:
        change = (ob["time_ms"] - oa["time_ms"]) / oa["time_ms"]
        ax.annotate(f"{ob['op']} ({ob['phase']}) {'+' if change > 0 else ''}{change:.0%}",
                    (ob["intensity"], ob["achieved_tflops"] * 1e12), textcoords="offset points", xytext=(6, 4),
                    fontsize=7)
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(min(ys) / 3, peak * 3),
           xlabel="arithmetic intensity (FLOP / byte, analytic)", ylabel="achieved FLOP/s",
           title=f"Roofline: {comparison.names[0]} {a_run.run_id} (hollow) -> {comparison.names[b]} {b_run.run_id}")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: tick(v)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v, "FLOP/s")))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())
    handles = [Line2D([], [], ls="", marker="o", mfc="none", color="#555555", label=f"{comparison.names[0]} (before)"),
               Line2D([], [], ls="", marker="o", color="#555555", label=f"{comparison.names[b]} (after)")]
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig
