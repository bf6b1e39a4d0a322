"""How tuner writes numbers for people: one format per quantity, in every table, summary, report and chart.

- Fractions of a whole (MBU, MFU, SLO attainment, shares of time, agreement rates) are percents: `pct`.
- Everything else (milliseconds, tok/s, GB/s, KL) has three significant digits and never scientific notation:
  `num`. Large values are whole numbers with thousands separators (19,370), small ones keep their digits
  (0.00066).
- Dollars are `usd`, byte counts `size`.
- A percentile over one sample is not four equal numbers: `percentiles` says "1 sample".

`value(metric, x)` picks the format from the metric's name, so every front end writes a metric the same way.
This module imports nothing of tuner.
"""

from __future__ import annotations

import math

# metrics that are a fraction of a whole (0..1), shown as percents
PERCENT = frozenset({"mbu", "mfu", "slo_attainment", "top1_agreement", "greedy_match", "prefix_hit_rate",
                     "decode_step_spread"})
PERCENT_SUFFIXES = ("_share", "_of_peak")
NA = "n/a"


def is_percent(metric: str) -> bool:
    return metric in PERCENT or metric.endswith(PERCENT_SUFFIXES) or metric.startswith("pct_")


def num(x, digits: int = 3) -> str:
    """`digits` significant digits without scientific notation: 0.00066, 4.12, 41.2, 412, 19,370."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return NA
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}" if abs(x) >= 10000 else str(x)
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if mag >= digits - 1:
        return f"{x:,.0f}" if abs(x) >= 10000 else f"{x:.0f}"
    places = digits - 1 - mag
    if places > 8:  # below 1e-6 at 3 digits: nothing a decision reads
        return "0" if abs(x) < 5e-9 else f"{x:.8f}".rstrip("0")
    return f"{x:.{places}f}"


def pct(x) -> str:
    """A fraction as a percent: one decimal from 10% up (10.9%, 100.0%), three significant digits below
    (2.94%, 0.420%)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return NA
    p = 100 * x
    return f"{p:.1f}%" if abs(p) >= 10 else num(p) + "%"


def usd(x) -> str:
    return NA if x is None else "$" + num(x)


def size(n) -> str:
    """Bytes in binary units: 513 MiB, 1.38 GiB, 900 KiB."""
    if n is None:
        return NA
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{num(n / scale)} {unit}"
    return f"{int(n)} B"


def value(metric: str, x) -> str:
    """`x` as metric `metric` is written everywhere: a percent, dollars, bytes or a plain number."""
    if isinstance(x, bool) or isinstance(x, str):
        return str(x)
    if isinstance(x, (list, tuple, dict)):
        return str(x)
    if is_percent(metric):
        return pct(x)
    if metric.startswith("usd") or metric.endswith("_usd"):
        return usd(x)
    if metric.endswith("_bytes"):
        return size(x)
    return num(x)


def percentiles(m: dict, key: str, samples: int | None = None, quantiles=(50, 90, 99)) -> str:
    """"mean 4.12  p50 4.01  p90 4.60  p99 5.31" from m[key], m[key_p50]...; "4.12 (1 sample)" when the figures
    rest on one sample (`samples`, else m[key_samples])."""
    n = samples if samples is not None else m.get(f"{key}_samples")
    if m.get(key) is None:
        return NA
    if n == 1:
        return f"{num(m[key])} (1 sample)"
    return "  ".join([f"mean {num(m[key])}", *(f"p{q} {num(m.get(f'{key}_p{q}'))}" for q in quantiles)])


def frame(df):
    """A copy of a pandas frame with every numeric cell written as its column's metric (`value`), for display:
    the numbers a table shows are the ones the summary shows."""
    out = df.copy()
    for col in out.columns:
        out[col] = [value(str(col), v) if v is not None and not (isinstance(v, float) and math.isnan(v)) else ""
                    for v in df[col]]
    return out
