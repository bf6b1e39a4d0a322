"""Serving metrics, as vLLM's serving benchmark defines them, from one row per request.

Per request (ms, from its arrival): TTFT = first token; TPOT = (e2e - TTFT) / (output tokens - 1); ITL = each
gap between consecutive tokens; e2e = last token; queue = arrival to first scheduled. Over the run:
percentiles p50/p90/p95/p99 (ITL pooled over every request), request throughput = finished requests /
duration, output tok/s = output tokens / duration (duration: first arrival to last token), and goodput =
finished requests per second that met every SLO (DistServe's definition). An SLO is a per-request limit:
`ttft_ms`, `tpot_ms` or `e2e_ms`.
"""

from __future__ import annotations

import numpy as np

from ..knobs import short_repr

PERCENTILES = (50, 90, 95, 99)
SLO_KEYS = ("ttft_ms", "tpot_ms", "e2e_ms")
LATENCIES = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms", "queue_ms")


def check_slo(slo: dict | None) -> dict[str, float]:
    """The SLO as {metric: limit in ms}; ValueError naming the allowed keys for anything else."""
    if slo is None:
        return {}
    if not isinstance(slo, dict):
        raise ValueError(f"slo={short_repr(slo)} is not allowed: give a dict of per-request limits in ms, e.g. "
                         "{'ttft_ms': 500, 'tpot_ms': 50}")
    out = {}
    for k, v in slo.items():
        if k not in SLO_KEYS:
            raise ValueError(f"slo key {short_repr(k)} is not allowed: use {', '.join(SLO_KEYS)} (per-request limits "
                             "in ms)")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"slo {k}={short_repr(v)} is not allowed: a limit is a number of ms > 0")
        out[k] = float(v)
    return out


def request_row(seq, rejected: str | None = None) -> dict:
    """One request's row from its finished Sequence (tuner.engine.scheduler): lengths, latencies from its arrival,
    and what the scheduler did with it."""
    t = [x - seq.arrival_ms for x in seq.times_ms]
    row = {"id": seq.id, "arrival_s": round(seq.arrival_ms / 1e3, 6), "prompt_len": len(seq.prompt),
           "output_len": len(seq.tokens), "max_new_tokens": seq.max_new_tokens,
           "finished": seq.done and bool(seq.tokens),
           "ttft_ms": t[0] if t else None, "tpot_ms": (t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else None,
           "e2e_ms": t[-1] if t else None, "itl_ms": [round(b - a, 4) for a, b in zip(t, t[1:], strict=False)],
           "queue_ms": seq.admitted_ms - seq.arrival_ms if seq.admitted_ms is not None else None,
           "preemptions": seq.preemptions, "prefix_hit_tokens": seq.prefix_hit_tokens,
           "prefill_tokens": seq.prefill_tokens, "rejected": rejected}
    return row


def meets(row: dict, slo: dict[str, float]) -> bool:
    """Whether a finished request met every limit of the SLO (a one-token request has no TPOT to break)."""
    if not row["finished"]:
        return False
    return all(row[k] is None and k == "tpot_ms" or row[k] is not None and row[k] <= v for k, v in slo.items())


def summarize(rows: list[dict], slo: dict[str, float]) -> dict:
    """The run's metrics from its request rows."""
    done = [r for r in rows if r["finished"]]
    out: dict = {"requests": len(rows), "finished": len(done), "rejected": sum(r["rejected"] is not None for r in rows)}
    for name in LATENCIES:
        if name == "itl_ms":
            values = np.array([x for r in done for x in r["itl_ms"]])
        else:
            values = np.array([r[name] for r in done if r[name] is not None])
        out[name] = float(values.mean()) if values.size else None  # the mean, named as in tuner.run/1
        for p in PERCENTILES:
            out[f"{name}_p{p}"] = float(np.percentile(values, p)) if values.size else None
        out[f"{name}_samples"] = int(values.size)
    arrivals = [r["arrival_s"] for r in rows if r["rejected"] is None]
    ends = [r["arrival_s"] + r["e2e_ms"] / 1e3 for r in done]
    duration = max(ends) - min(arrivals) if ends and arrivals else 0.0
    out["duration_s"] = duration
    out["output_tokens"] = sum(r["output_len"] for r in rows)
    out["request_throughput"] = len(done) / duration if duration else None
    out["output_tok_s"] = out["output_tokens"] / duration if duration else None
    good = [r for r in done if meets(r, slo)]
    out["goodput_req_s"] = len(good) / duration if duration and slo else None
    served = len(rows) - out["rejected"]
    out["slo_attainment"] = len(good) / served if slo and served else None  # share of requests that met the SLO
    prompt_tokens = sum(r["prompt_len"] for r in rows if r["rejected"] is None)
    out["prefix_hit_rate"] = sum(r["prefix_hit_tokens"] for r in rows) / prompt_tokens if prompt_tokens else None
    out["prefill_tokens"] = sum(r["prefill_tokens"] for r in rows)
    out["preemptions"] = sum(r["preemptions"] for r in rows)
    return out
