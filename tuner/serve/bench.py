"""`tuner.serve_bench`: requests injected at their arrival times into the engine's decode loop, measured as
vLLM's serving benchmark measures them; and `tuner.capacity`: the highest request rate that still meets the
SLO."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .. import fmt
from ..knobs import short_repr
from .metrics import check_slo, request_row, summarize
from .result import ServeResult
from .traffic import Traffic

CAPACITY_SCHEMA = "tuner.capacity/1"


def _engine(config):
    from ..config import EngineConfig
    from ..engine.engine import Engine

    if isinstance(config, Engine):
        return config
    if config is None:
        return Engine()
    if isinstance(config, dict):
        return Engine(**config)
    if isinstance(config, EngineConfig):
        return Engine(config)
    raise ValueError(f"config={short_repr(config)} is not allowed: give a tuner.Engine, an EngineConfig or a dict "
                     "of engine knobs")


def _why_not(engine, prompt_len: int, output_len: int) -> str | None:
    """Why the engine cannot serve a request of these lengths, or None."""
    c = engine.config
    if prompt_len + output_len > c.max_seq_len:
        return f"prompt {prompt_len} + output {output_len} tokens exceed max_seq_len={c.max_seq_len}"
    if c.max_num_batched_tokens and not c.enable_chunked_prefill and prompt_len > c.max_num_batched_tokens:
        return (f"prompt of {prompt_len} tokens exceeds max_num_batched_tokens={c.max_num_batched_tokens} with "
                "chunked prefill off")
    return None


def serve_bench(config=None, traffic: Traffic | dict | None = None, slo: dict | None = None, sampling=None,
                on_step: Callable[[dict], bool | None] | None = None, warmup: bool = True) -> ServeResult:
    """Serve `traffic` (tuner.Traffic) on an engine (a tuner.Engine, an EngineConfig or a dict of knobs) in real
    time and measure it: a ServeResult with a row per request (TTFT, TPOT, ITL, e2e, queue time, preemptions,
    prefix-cache hits) and the run's percentiles, throughput and goodput under `slo` (per-request limits in ms:
    {"ttft_ms": 500, "tpot_ms": 50}). Each request makes exactly its output_len tokens (EOS ignored, as serving
    benchmarks do); sampling (a SamplingParams) is greedy by default. A request the engine cannot hold is
    rejected with its reason while the rest run. Ctrl-C stops the run and keeps every finished request's row.
    """
    from .. import __version__
    from ..config import SamplingParams
    from ..engine.scheduler import Sequence
    from ..profile.capture import new_run_id
    from ..profile.prices import device_price, per_million

    slo = check_slo(slo)
    traffic = Traffic.of(traffic)
    engine = _engine(config)
    sampling = sampling if sampling is not None else SamplingParams()
    if not isinstance(sampling, SamplingParams):
        raise ValueError(f"sampling={short_repr(sampling)} is not allowed: give a tuner.SamplingParams")
    requests = traffic.requests(engine.args.vocab_size, engine.tokenizer)
    seqs, rejected = [], []
    for i, r in enumerate(requests):
        why = _why_not(engine, len(r.prompt), r.output_len)
        seq = Sequence(r.prompt, r.output_len, frozenset(), id=i, arrival_ms=r.arrival_s * 1e3)
        (rejected if why else seqs).append((seq, why))
    if not seqs:
        raise ValueError(f"every request was rejected, e.g. request 0: {rejected[0][1]}")
    if warmup:
        engine.warmup()
    stats, _ = engine.serve([s for s, _ in seqs], sampling.replace(ignore_eos=True), on_step,
                            traffic.max_concurrency)
    rows = sorted([request_row(s) for s, _ in seqs] + [request_row(s, why) for s, why in rejected],
                  key=lambda r: r["id"])
    metrics = summarize(rows, slo)
    hw = engine.hardware()
    price = device_price(hw, engine.config.price_per_hour)
    metrics["usd_per_1m_output_tokens"] = per_million(price["price_per_hour"], metrics["output_tok_s"])
    metrics["decode_steps"], metrics["prefill_steps"], metrics["mixed_steps"] = (
        len(stats.decode_ms), len(stats.prefill_ms), len(stats.mixed_ms))
    metrics["mbu"] = stats.decode_metrics(hw)["mbu"]  # over the decode-only steps
    notes = []
    if stats.interrupted:
        notes.append("interrupted (Ctrl-C): the rows that finished are kept")
    return ServeResult(config=engine.config.to_dict(), sampling=sampling.to_dict(), traffic=traffic.to_dict(),
                       slo=slo, hardware={**hw, **price}, metrics=metrics, requests=rows, timeline=stats.timeline,
                       notes=notes, stopped=stats.stopped, run_id=new_run_id(), tuner_version=__version__,
                       machine_load=stats.meter.stop(), telemetry=stats.telemetry.record())


# -- capacity ---------------------------------------------------------------------------------------------


@dataclass
class CapacityResult:
    """The rates tried, each point's SLO attainment and p99 latencies, and the highest rate that held."""

    slo: dict
    attainment: float
    traffic: dict
    config: dict
    points: list[dict]
    capacity_req_s: float | None
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    MIME = "application/vnd.tuner.capacity+json"

    def table(self) -> str:
        head = f"{'rate req/s':>10}  {'met SLO':>7}  {'goodput':>8}  {'TTFT p99':>9}  {'TPOT p99':>9}"
        lines = [head]
        for p in sorted(self.points, key=lambda p: p["rate"]):
            lines.append(f"{fmt.num(p['rate']):>10}  {fmt.pct(p['slo_attainment']):>7}  "
                         f"{fmt.num(p['goodput_req_s'] or 0):>8}  {fmt.num(p['ttft_ms_p99']):>9}  "
                         f"{fmt.num(p['tpot_ms_p99']):>9}")
        cap = "none of the rates tried" if self.capacity_req_s is None else f"{fmt.num(self.capacity_req_s)} req/s"
        limits = ", ".join(f"{k} <= {fmt.num(v)}" for k, v in self.slo.items())
        lines.append(f"capacity: {cap} with at least {fmt.pct(self.attainment)} of requests meeting {limits}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"CapacityResult(capacity_req_s={self.capacity_req_s}, points={len(self.points)})"

    def plot(self):
        from ..profile.plots import styled

        return styled(self._plot)()

    def _plot(self):
        from ..profile.plots import subplots

        fig, (a, b) = subplots((10, 3.8), 1, 2)
        pts = sorted(self.points, key=lambda p: p["rate"])
        rates = [p["rate"] for p in pts]
        for key, label in (("ttft_ms_p99", "TTFT p99"), ("tpot_ms_p99", "TPOT p99")):
            a.plot(rates, [p[key] for p in pts], marker="o", label=label)
            limit = self.slo.get(key.removesuffix("_p99"))
            if limit:
                a.axhline(limit, ls="--", lw=1, color="#d62728")
        a.set(xlabel="request rate (req/s)", ylabel="ms", title="latency against load")
        a.legend(fontsize=8)
        b.plot(rates, [p["goodput_req_s"] or 0 for p in pts], marker="o", label="goodput")
        b.plot(rates, rates, ls=":", color="#7f7f7f", label="offered")
        if self.capacity_req_s:
            b.axvline(self.capacity_req_s, ls="--", color="#2ca02c", label=f"capacity {self.capacity_req_s:.3g}")
        b.set(xlabel="request rate (req/s)", ylabel="req/s meeting the SLO", title="goodput")
        b.legend(fontsize=8)
        fig.tight_layout()
        return fig

    def to_dict(self) -> dict[str, Any]:
        return {"schema": CAPACITY_SCHEMA, "slo": self.slo, "attainment": self.attainment, "traffic": self.traffic,
                "config": self.config, "points": self.points, "capacity_req_s": self.capacity_req_s,
                "created": self.created}

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        import base64
        import html

        from ..profile.plots import png

        img = base64.b64encode(png(self.plot(), dpi=72)).decode()
        body = (f"<div class='tuner-capacity'><pre>{html.escape(self.table())}</pre>"
                f"<img alt='capacity curve' src='data:image/png;base64,{img}' style='max-width:720px'/></div>")
        return {"text/plain": self.table(), "text/html": body, self.MIME: self.to_dict()}


def capacity(config=None, traffic: Traffic | dict | None = None, slo: dict | None = None, attainment: float = 0.9,
             start_rate: float | None = None, max_rungs: int = 6, bisections: int = 3, sampling=None,
             duration_s: float | None = None, progress: Callable[[dict], None] | None = None) -> CapacityResult:
    """The highest request rate at which at least `attainment` of the requests meet `slo`: a ladder of rates
    (doubling from start_rate, default the traffic's rate or 1 req/s, halving if that already fails), then
    `bisections` halvings of the interval between the last rate that held and the first that did not. Every
    point is a full serve_bench run of the same traffic at that rate on one engine; with duration_s, a point
    serves about duration_s seconds of arrivals (at least 8 requests, at most the traffic's num_prompts), so low
    rates do not take minutes."""
    slo = check_slo(slo)
    if not slo:
        raise ValueError("capacity needs an SLO, e.g. slo={'ttft_ms': 500, 'tpot_ms': 50}")
    if isinstance(attainment, bool) or not isinstance(attainment, (int, float)) or not 0 < attainment <= 1:
        raise ValueError(f"attainment={short_repr(attainment)} is not allowed: a share of requests in (0, 1]")
    traffic = Traffic.of(traffic)
    engine = _engine(config)
    engine.warmup()
    rate = start_rate or (traffic.rate if math.isfinite(traffic.rate) else 1.0)
    points: list[dict] = []

    def run(r: float) -> bool:
        n = traffic.num_prompts if duration_s is None else min(traffic.num_prompts, max(8, round(r * duration_s)))
        res = serve_bench(engine, traffic.replace(rate=r, num_prompts=n), slo, sampling, warmup=False)
        m = res.metrics
        point = {"rate": r, "requests": n, "slo_attainment": m["slo_attainment"] or 0.0,
                 "goodput_req_s": m["goodput_req_s"],
                 "ttft_ms_p99": m["ttft_ms_p99"], "tpot_ms_p99": m["tpot_ms_p99"],
                 "request_throughput": m["request_throughput"], "preemptions": m["preemptions"]}
        points.append(point)
        if progress is not None:
            progress(point)
        return point["slo_attainment"] >= attainment

    good, bad = None, None
    if run(rate):
        good = rate
        for _ in range(max_rungs - 1):
            rate *= 2
            if not run(rate):
                bad = rate
                break
            good = rate
    else:
        bad = rate
        for _ in range(max_rungs - 1):
            rate /= 2
            if run(rate):
                good = rate
                break
            bad = rate
    if good is not None and bad is not None:
        for _ in range(bisections):
            mid = (good + bad) / 2
            if run(mid):
                good = mid
            else:
                bad = mid
    return CapacityResult(slo=slo, attainment=float(attainment), traffic=traffic.to_dict(),
                          config=engine.config.to_dict(), points=points, capacity_req_s=good)
