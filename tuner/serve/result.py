"""`ServeResult`: one serving benchmark's record (schema tuner.serve/1), one row per request, and its charts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import fmt
from ..profile.load import warning as load_warning
from ..result import aligned, check_record

SCHEMA = "tuner.serve/1"


def _span(v) -> str:
    """A length: N, or a drawn range low-high."""
    return f"{v[0]}-{v[1]}" if isinstance(v, (list, tuple)) else str(v)


@dataclass
class ServeResult:
    """Requests served under traffic: config, traffic, SLO, hardware, metrics, a row per request and the queue
    over time (`timeline`: after each step, its time, step_ms, running and waiting requests, KV blocks in use)."""

    config: dict
    sampling: dict
    traffic: dict
    slo: dict
    hardware: dict
    metrics: dict
    requests: list[dict]
    timeline: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stopped: bool = False
    machine_load: dict = field(default_factory=dict)  # how busy the machine was (tuner.profile.load.LoadMeter)
    telemetry: dict = field(default_factory=dict)  # utilisation samples over the run (tuner.profile.telemetry)
    run_id: str = ""
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    tuner_version: str = ""

    MIME = "application/vnd.tuner.serve+json"

    # -- reading it -------------------------------------------------------------------------------------

    def table(self) -> str:
        m, c, t = self.metrics, self.config, self.traffic
        rate = "inf (all at once)" if t.get("rate") is None else f"{t['rate']:g} req/s"
        if t.get("trace"):
            rate = f"trace {Path(t['trace']).name}"
        prefix = " + ".join(x for x in (
            "chunked prefill" if c.get("enable_chunked_prefill") else "",
            "prefix caching" if c.get("enable_prefix_caching") else "") if x) or "neither"
        budget = c.get("max_num_batched_tokens") or "none"
        rows = [("warning", w) for w in (load_warning(self.machine_load),) if w] + [
            ("model", f"{c['model']} ({c['dtype']}, quant={c['quant']}, kv={c['kv_cache']}/{c['kv_dtype']})"),
            ("device", f"{self.hardware.get('name')} ({c['device']}, {c['backend']})"),
            ("scheduler", f"{c.get('scheduling')}, max {c['batch_size']} running, token budget {budget}, "
                          f"chunked prefill / prefix caching: {prefix}"),
            ("traffic", f"{m['requests']} requests at {rate}, burstiness {t.get('burstiness', 1):g}, prompt "
                        f"{_span(t.get('prompt_len'))} tokens, output {_span(t.get('output_len'))}"),
            ("finished", f"{m['finished']} of {m['requests']} ({m['rejected']} rejected) in {m['duration_s']:.2f} s"),
        ]
        for key, label in (("ttft_ms", "TTFT ms"), ("tpot_ms", "TPOT ms"), ("itl_ms", "ITL ms"),
                           ("e2e_ms", "e2e ms"), ("queue_ms", "queue ms")):
            if m.get(f"{key}_samples", 0):
                rows.append((label, fmt.percentiles(m, key)))
        rows.append(("throughput", f"{fmt.num(m.get('request_throughput'))} req/s, "
                                   f"{fmt.num(m.get('output_tok_s'))} output tok/s"))
        if self.slo:
            limits = ", ".join(f"{k} <= {fmt.num(v)}" for k, v in self.slo.items())
            rows.append(("goodput", f"{fmt.num(m.get('goodput_req_s'))} req/s met the SLO ({limits}): "
                                    f"{fmt.pct(m['slo_attainment'])} of requests"))
        rows.append(("scheduler did", f"{m['preemptions']} preemptions, prefix-cache hits "
                                      f"{fmt.pct(m.get('prefix_hit_rate') or 0)} of prompt tokens, "
                                      f"{m['prefill_tokens']} prefill tokens computed"))
        if self.stopped:
            rows.append(("stopped", "yes: the run was stopped early; the rows are the requests that finished"))
        for note in self.notes:
            rows.append(("note", note))
        return aligned(rows)

    def __repr__(self) -> str:
        m = self.metrics
        return (f"ServeResult({self.config['model']}, {m['finished']}/{m['requests']} requests, "
                f"goodput_req_s={fmt.num(m.get('goodput_req_s'))}, ttft_ms_p99={fmt.num(m.get('ttft_ms_p99'))}, "
                f"tpot_ms_p99={fmt.num(m.get('tpot_ms_p99'))})")

    def frame(self):
        """The request rows as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame([{k: v for k, v in r.items() if k != "itl_ms"} for r in self.requests])

    # -- charts -----------------------------------------------------------------------------------------

    def plot(self):
        """Latency over the run, the queue and batch over time, and the TTFT / TPOT CDFs (one Figure)."""
        from ..profile.plots import styled

        return styled(self._plot)()

    def _plot(self):
        import numpy as np

        from ..profile.plots import subplots

        fig, ax = subplots((11, 7.5), 2, 2)
        done = [r for r in self.requests if r["finished"]]
        a = ax[0][0]
        a.scatter([r["arrival_s"] for r in done], [r["ttft_ms"] for r in done], s=10, label="TTFT")
        a.scatter([r["arrival_s"] for r in done], [r["e2e_ms"] for r in done], s=10, marker="^", label="e2e")
        if "ttft_ms" in self.slo:
            a.axhline(self.slo["ttft_ms"], color="#d62728", ls="--", lw=1, label=f"TTFT SLO {self.slo['ttft_ms']:g}")
        a.set(xlabel="arrival (s)", ylabel="ms", title="latency by arrival")
        a.legend(fontsize=8)
        a = ax[0][1]
        t = [p["t_ms"] / 1e3 for p in self.timeline]
        a.step(t, [p["running"] for p in self.timeline], where="post", label="running")
        a.step(t, [p["waiting"] for p in self.timeline], where="post", label="waiting")
        a.set(xlabel="time (s)", ylabel="requests", title="queue and batch over time")
        a.legend(fontsize=8)
        if any(p.get("kv_blocks_used") is not None for p in self.timeline):
            kv = a.twinx()
            kv.plot(t, [p.get("kv_blocks_used") or 0 for p in self.timeline], color="#7f7f7f", lw=0.8)
            kv.set_ylabel("KV blocks in use", color="#7f7f7f")
            kv.grid(False)
        for a, key, label in ((ax[1][0], "ttft_ms", "TTFT"), (ax[1][1], "tpot_ms", "TPOT")):
            x = np.sort([r[key] for r in done if r[key] is not None])
            if x.size:
                a.plot(x, np.arange(1, x.size + 1) / x.size, drawstyle="steps-post")
            if key in self.slo:
                a.axvline(self.slo[key], color="#d62728", ls="--", lw=1, label=f"SLO {self.slo[key]:g} ms")
                a.legend(fontsize=8)
            a.set(xlabel=f"{label} (ms)", ylabel="share of requests", title=f"{label} CDF", ylim=(0, 1.02))
        fig.tight_layout()
        return fig

    # -- notebooks and files ----------------------------------------------------------------------------

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        return {"text/plain": self.table(), "text/html": self._html(), self.MIME: self.to_dict()}

    def _html(self) -> str:
        import base64
        import html

        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k.strip())}</th><td style='text-align:left'>"
                       f"{html.escape(v.strip())}</td></tr>"
                       for k, _, v in (line.partition("  ") for line in self.table().splitlines()))
        parts = [f"<div class='tuner-serve'><b>tuner serve-bench {html.escape(self.run_id)}</b><table>{rows}</table>"]
        try:
            from ..profile.plots import png

            b64 = base64.b64encode(png(self.plot(), dpi=72)).decode()
            parts.append(f"<img alt='latency, queue and CDFs' src='data:image/png;base64,{b64}' "
                         "style='max-width:760px'/>")
        except ImportError:
            pass
        return "".join(parts) + "</div>"

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "run_id": self.run_id, "created": self.created, "tuner_version": self.tuner_version,
                "config": self.config, "sampling": self.sampling, "traffic": self.traffic, "slo": self.slo,
                "hardware": self.hardware, "metrics": self.metrics, "requests": self.requests,
                "timeline": self.timeline, "notes": self.notes, "stopped": self.stopped,
                "machine_load": self.machine_load, "telemetry": self.telemetry}

    @classmethod
    def from_dict(cls, d: dict) -> ServeResult:
        check_record(d, SCHEMA, "serve", {"config": dict, "sampling": dict, "traffic": dict, "slo": dict,
                                          "hardware": dict, "metrics": dict, "requests": list, "run_id": str})
        return cls(**{k: d[k] for k in ("config", "sampling", "traffic", "slo", "hardware", "metrics", "requests",
                                        "run_id")},
                   timeline=d.get("timeline", []), notes=d.get("notes", []), stopped=d.get("stopped", False),
                   machine_load=d.get("machine_load") or {},
                   telemetry=d.get("telemetry") or {}, created=d.get("created", ""),
                   tuner_version=d.get("tuner_version", ""))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict()))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ServeResult:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} is not a readable tuner.serve/1 record: {e}") from None
        return cls.from_dict(d)
