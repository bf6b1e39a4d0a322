"""Plots of a profiled run (matplotlib + seaborn, imported on first use). Each returns a Figure."""

from __future__ import annotations

import functools

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

    return TunerFigure(figsize=figsize)


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


@styled
def roofline(result, phase: str | None = None, ax=None):
    """Ops as points (arithmetic intensity, achieved FLOP/s) on log-log axes under the measured ceilings
    (bandwidth slope and matmul roof), coloured by their bound; prefill circles, decode triangles."""
    import numpy as np

    df = _ops(result, phase)
    df = df[(df.flops > 0) & (df.time_ms > 0)]
    hw = result.hardware
    bw, peak = hw["bandwidth_gbs"] * 1e9, hw["matmul_tflops"] * 1e12
    fig, ax = (ax.figure, ax) if ax is not None else subplots(figsize=(8, 5.5))
    lo = max(min(df.intensity.min(), peak / bw) / 10, 1e-3)
    hi = max(df.intensity.max(), peak / bw) * 10
    x = np.logspace(np.log10(lo), np.log10(hi), 200)
    ax.plot(x, np.minimum(x * bw, peak) / 1e12, color="black", lw=1.5,
            label=f"measured roof: {hw['bandwidth_gbs']:.0f} GB/s, {hw['matmul_tflops']:.3g} TFLOP/s")
    ax.axvline(peak / bw, color="black", lw=0.8, ls=":")
    markers = {"prefill": "o", "decode": "^"}
    for (ph, bound), g in df.groupby(["phase", "bound"]):
        ax.scatter(g.intensity, g.achieved_tflops, s=60, marker=markers.get(ph, "o"),
                   color=BOUND_COLORS.get(bound, "C0"), edgecolor="white", label=f"{ph}: {bound}-bound", zorder=3)
    for _, r in df.iterrows():
        if r.time_ms >= 0.03 * df[df.phase == r.phase].time_ms.sum():  # label the ops that matter
            up = r.phase == "prefill"
            ax.annotate(f"{r.op} ({r.phase})", (r.intensity, r.achieved_tflops), textcoords="offset points",
                        xytext=(5, 4 if up else -10), fontsize=7, rotation=20 if up else -20)
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP / byte, analytic)",
           ylabel="achieved TFLOP/s", title=f"Roofline: {result.config['model']} on {hw.get('name')}")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
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
