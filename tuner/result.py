"""`RunResult`: one run's record (schema tuner.run/1) and its metrics, defined as vLLM's benchmarks define them.

Per request: TTFT = first token time; TPOT = (e2e - TTFT) / (output tokens - 1); ITL = every gap
between consecutive tokens, pooled over all requests; e2e = last token time. All requests arrive at
the start of generate(), so a later static batch's TTFT includes its wait. Throughput divides by
the run's duration (the last token of the last request).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from . import fmt
from .profile.load import warning as load_warning

SCHEMA = "tuner.run/1"
PERCENTILES = (50, 90, 99)


def compute_metrics(token_times_ms: list[list[float]], prompt_lens: list[int]) -> dict[str, float]:
    """Latency and throughput metrics from each request's token emission times (ms since the run began)."""
    done = [t for t in token_times_ms if t]
    out = {}
    ttft = np.array([t[0] for t in done])
    e2e = np.array([t[-1] for t in done])
    tpot = np.array([(t[-1] - t[0]) / (len(t) - 1) for t in done if len(t) > 1])
    itl = np.concatenate([np.diff(t) for t in done]) if done else np.array([])
    for name, values in (("ttft_ms", ttft), ("tpot_ms", tpot), ("itl_ms", itl), ("e2e_ms", e2e)):
        out[name] = float(values.mean()) if values.size else None
        for p in PERCENTILES:
            out[f"{name}_p{p}"] = float(np.percentile(values, p)) if values.size else None
    duration_s = float(e2e.max()) / 1e3 if e2e.size else 0.0
    n_out = sum(len(t) for t in token_times_ms)
    out["duration_s"] = duration_s
    out["output_tokens"] = n_out
    out["output_tok_s"] = n_out / duration_s if duration_s else None
    out["total_tok_s"] = (n_out + sum(prompt_lens)) / duration_s if duration_s else None
    out["request_s"] = len(done) / duration_s if duration_s else None
    return out


@dataclass
class RunResult:
    """One generate() call: its config, workload, tokens, timings, metrics, hardware and memory."""

    config: dict
    sampling: dict
    workload: dict
    hardware: dict
    metrics: dict
    tokens: list[list[int]]
    text: list[str] | None = None
    timings: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    ops_records: list[dict] = field(default_factory=list)
    profile: dict = field(default_factory=dict)  # profiled runs: trace paths and the per-phase summary
    stopped: bool = False
    machine_load: dict = field(default_factory=dict)  # how busy the machine was (tuner.profile.load.LoadMeter)
    telemetry: dict = field(default_factory=dict)  # utilisation samples over the run (tuner.profile.telemetry)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    tuner_version: str = ""

    @property
    def ops(self):
        """Per (phase, op) profile table as a pandas DataFrame; empty unless the run was profiled.

        Columns: phase, op, calls, time_ms, flops, bytes (analytic), intensity (FLOP/B), achieved_tflops,
        achieved_gbs, pct_peak_compute, pct_peak_bandwidth (of the measured peaks), bound (memory /
        compute / overhead) and explanation."""
        import pandas as pd

        return pd.DataFrame(self.ops_records)

    def ops_text(self, phase: str | None = None) -> str:
        """The op table as aligned text (what `tuner run --profile` prints)."""
        rows = [r for r in self.ops_records if phase is None or r["phase"] == phase]
        if not rows:
            return "no op profile: run with profile=True"
        totals: dict[str, float] = {}
        for r in rows:
            totals[r["phase"]] = totals.get(r["phase"], 0.0) + r["time_ms"]
        head = f"{'phase':<8} {'op':<14} {'calls':>6} {'ms':>9} {'share':>6} {'GB/s':>8} {'TFLOP/s':>8} " \
               f"{'%BW':>6} {'%FLOP':>6}  bound"
        lines = [head]
        for r in rows:
            lines.append(f"{r['phase']:<8} {r['op']:<14} {r['calls']:>6} {fmt.num(r['time_ms']):>9} "
                         f"{fmt.pct(r['time_ms'] / totals[r['phase']]):>6} {fmt.num(r['achieved_gbs']):>8} "
                         f"{fmt.num(r['achieved_tflops']):>8} {fmt.pct(r['pct_peak_bandwidth']):>6} "
                         f"{fmt.pct(r['pct_peak_compute']):>6}  {r['bound']}")
        for ph, entry in self.profile.get("phases", {}).items():
            if "idle_share" in entry:
                lines.append(f"{ph}: the GPU was idle or waiting on the host {fmt.pct(entry['idle_share'])} "
                             "of the time")
        if self.profile.get("trace_dir"):
            lines.append(f"traces: {self.profile['trace_dir']} (Perfetto: trace.json.gz; TensorBoard: "
                         "tuner.pt.trace.json.gz)")
        return "\n".join(lines)

    def roofline(self, phase: str | None = None):
        """Figure: the ops on a roofline under this device's measured ceilings (needs matplotlib/seaborn)."""
        from .profile.plots import roofline

        return roofline(self, phase)

    def time_breakdown(self):
        """Figure: time per op and phase, coloured by bound."""
        from .profile.plots import time_breakdown

        return time_breakdown(self)

    def step_latency(self):
        """Figure: decode step latency over the run."""
        from .profile.plots import step_latency

        return step_latency(self)

    MIME = "application/vnd.tuner.run+json"

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """Notebook display: text/plain, text/html (metrics, op table, charts) and the tuner MIME type
        (the record without per-token data) for the JupyterLab renderer."""
        return {"text/plain": self.table(), "text/html": self._html(), self.MIME: self.display_record()}

    def display_record(self) -> dict[str, Any]:
        """The record without per-token data (tokens, text, token times): what a notebook output carries."""
        record = self.to_dict()
        record.pop("tokens"), record.pop("text")
        record["timings"] = {k: v for k, v in record["timings"].items() if k != "token_times_ms"}
        return record

    def _html(self) -> str:
        import base64
        import html

        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
                       f"{html.escape(v)}</td></tr>" for k, v in (line.split("  ", 1) for line in
                                                                   _split_table(self.table())))
        parts = [f"<div class='tuner-run'><b>tuner run {self.run_id}</b><table>{rows}</table>"]
        if self.ops_records:
            top = sorted(self.ops_records, key=lambda r: -r["time_ms"])[:8]
            cells = "".join(
                f"<tr><td>{r['phase']}</td><td>{r['op']}</td><td>{fmt.num(r['time_ms'])}</td>"
                f"<td>{fmt.pct(r['pct_peak_bandwidth'])}</td><td>{fmt.pct(r['pct_peak_compute'])}</td><td>{r['bound']}</td>"
                f"<td style='text-align:left'>{html.escape(r['explanation'])}</td></tr>" for r in top)
            parts.append("<b>slowest ops</b><table><tr><th>phase</th><th>op</th><th>ms</th><th>%BW</th>"
                         f"<th>%FLOP</th><th>bound</th><th>why</th></tr>{cells}</table>")
        try:
            from .profile.plots import png, roofline, step_latency, time_breakdown

            charts = []
            if self.ops_records:
                charts += [roofline(self), time_breakdown(self)]
            if len(self.timings.get("decode_step_ms") or []) > 1:
                charts.append(step_latency(self))
            for fig in charts:
                b64 = base64.b64encode(png(fig, dpi=72)).decode()
                parts.append(f"<img src='data:image/png;base64,{b64}' style='max-width:560px'/>")
        except ImportError:  # matplotlib / seaborn not installed: the tables alone
            pass
        parts.append("</div>")
        return "".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "run_id": self.run_id, "created": self.created,
                "tuner_version": self.tuner_version, "config": self.config, "sampling": self.sampling,
                "workload": self.workload, "hardware": self.hardware, "metrics": self.metrics,
                "memory": self.memory, "timings": self.timings, "tokens": self.tokens, "text": self.text,
                "ops": self.ops_records, "profile": self.profile, "stopped": self.stopped,
                "machine_load": self.machine_load, "telemetry": self.telemetry}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        check_record(d, SCHEMA, "run", {"config": dict, "sampling": dict, "workload": dict, "hardware": dict,
                                "metrics": dict, "tokens": list, "run_id": str, "created": str})
        return cls(config=d["config"], sampling=d["sampling"], workload=d["workload"], hardware=d["hardware"],
                   metrics=d["metrics"], tokens=d["tokens"], text=d.get("text"), timings=d.get("timings", {}),
                   memory=d.get("memory", {}), ops_records=d.get("ops", []), profile=d.get("profile", {}),
                   stopped=d.get("stopped", False), machine_load=d.get("machine_load") or {},
                   telemetry=d.get("telemetry") or {},
                   run_id=d["run_id"], created=d["created"], tuner_version=d.get("tuner_version", ""))

    @classmethod
    def from_json(cls, s: str) -> RunResult:
        return cls.from_dict(json.loads(s))

    def table(self) -> str:
        """The headline metrics as aligned text."""
        m, c, w = self.metrics, self.config, self.workload
        rows = [("warning", w) for w in (load_warning(self.machine_load),) if w] + [
            ("model", f"{c['model']} ({c['dtype']}, quant={c['quant']}, kv={c['kv_cache']}/{c['kv_dtype']})"),
            ("device", f"{self.hardware.get('name')} ({c['device']}, {c['backend']})"),
            ("workload", f"{w['n_prompts']} prompts x {w['prompt_len_mean']:.0f} tokens, batch {c['batch_size']}"),
            ("output tokens", f"{m['output_tokens']}"),
        ]
        requests = w.get("n_prompts")
        samples = {"itl_ms": m["output_tokens"] - requests if requests else None}
        for key, label in (("ttft_ms", "TTFT ms"), ("tpot_ms", "TPOT ms"), ("itl_ms", "ITL ms"), ("e2e_ms", "e2e ms")):
            if m.get(key) is not None:
                rows.append((label, fmt.percentiles(m, key, samples.get(key, requests))))
        rows.append(("throughput", f"{fmt.num(m.get('output_tok_s'))} output tok/s, "
                                   f"{fmt.num(m.get('total_tok_s'))} total tok/s"))
        if m.get("usd_per_1m_output_tokens") is not None:
            rows.append(("cost", f"{fmt.usd(m['usd_per_1m_output_tokens'])} per 1M output tokens, "
                                 f"{fmt.usd(m['usd_per_1m_tokens'])} per 1M tokens at "
                                 f"{fmt.usd(self.hardware['price_per_hour'])}/h ({self.hardware.get('price_source')})"))
        if m.get("mbu") is not None:
            rows.append(("decode", f"{fmt.num(m['decode_gbs'])} GB/s = MBU {fmt.pct(m['mbu'])} of measured "
                                   f"{fmt.num(self.hardware['bandwidth_gbs'])} GB/s; MFU {fmt.pct(m['mfu'])}"))
        if m.get("decode_step_spread") is not None:
            rows.append(("noise", f"decode steps vary by {fmt.pct(m['decode_step_spread'])} (p10 to p90 over "
                                  f"{len(self.timings.get('decode_step_ms') or [])} steps, of the median)"))
        mem = self.memory
        memory = (f"weights {fmt.size(mem['weights_bytes'])}, KV cache {fmt.size(mem['kv_cache_bytes'])}, "
                  f"peak RSS {fmt.size(mem['peak_rss_bytes'])} "
                  f"({'this run' if mem.get('peak_rss_scope') == 'run' else 'the process so far'})")
        if mem.get("cuda_peak_allocated_bytes"):
            memory += f", CUDA peak {fmt.size(mem['cuda_peak_allocated_bytes'])}"
        rows.append(("memory", memory))
        if self.stopped:
            rows.append(("stopped", "yes: the run was stopped early; metrics cover what finished"))
        return aligned(rows)

    def __repr__(self) -> str:
        m = self.metrics
        return (f"RunResult({self.config['model']}, batch={self.config['batch_size']}, "
                f"output_tok_s={fmt.num(m.get('output_tok_s'))}, tpot_ms={fmt.num(m.get('tpot_ms'))}, "
                f"mbu={fmt.pct(m.get('mbu'))})")


def check_record(d, schema: str | None, what: str, fields: dict[str, type]) -> None:
    """ValueError unless `d` is a record of `schema` (None: any mapping) holding each of `fields` with its type:
    the first a crafted or damaged record lacks, or holds as the wrong type, is named."""
    if schema is None and not isinstance(d, dict):
        raise ValueError(f"not a complete tuner {what} record: it is a {type(d).__name__}, not a mapping")
    if schema is not None and (not isinstance(d, dict) or d.get("schema") != schema):
        found = d.get("schema") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"not a tuner {what} record: schema is {str(found)[:60]!r}, expected {schema!r}")
    for key, kind in fields.items():
        if not isinstance(d.get(key), kind):
            got = "missing" if d.get(key) is None else f"a {type(d[key]).__name__}"
            raise ValueError(f"not a complete tuner {what} record: {key} is {got}, not a {kind.__name__}")


def aligned(rows: list[tuple[str, str]]) -> str:
    """(label, value) rows as text, the values lined up: what the records' table() methods print."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _split_table(text: str) -> list[str]:
    """Lines of table() with the label and value separated by two spaces."""
    out = []
    for line in text.splitlines():
        label, _, value = line.partition("  ")
        out.append(f"{label.strip()}  {value.strip()}")
    return out

