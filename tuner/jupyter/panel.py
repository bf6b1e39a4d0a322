"""`%tuner panel`: the knobs as widgets (generated from the registry), Run and Stop, live progress and a
per-step latency chart while the engine runs, then metrics, roofline and time-breakdown charts, and the
history of runs. Its serving tab sets traffic and an SLO; Serve runs them through the scheduler
(tuner.serve_bench) with live charts of the running and waiting requests and the TTFT of finished ones.

The run happens on a worker thread, so the kernel stays free to receive the Stop click; the thread
carries the cell's parent header (ipykernel 7 routes thread output by it). The thread only sets widget
values (HTML, Image, progress), which sync to the front end from any thread; errors land in the panel.
"""

from __future__ import annotations

import html
import threading
import time
import traceback

from .. import fmt
from ..knobs import ENGINE_KNOBS, SAMPLING_ALIASES, SAMPLING_KNOBS, WORKLOAD_KNOBS, Knob
from ..profile.telemetry import line as telemetry_line
from .session import Session

LIVE_INTERVAL_S = 0.3  # redraw the live chart at most ~3 times a second


def widgets_unavailable(shell) -> str | None:
    """Why widgets cannot render in this shell, or None when they can."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return "ipywidgets is not installed (pip install ipywidgets, or tuner[jupyter])"
    if shell is None or "IPKernelApp" not in getattr(shell, "config", {}):
        return "this is not a Jupyter kernel (a plain console has no widget front end)"
    return None


def _widget(knob: Knob, value, name: str):
    import ipywidgets as w

    style = {"description_width": "initial"}
    layout = w.Layout(width="260px")
    kw = dict(description=name, style=style, layout=layout, tooltip=knob.help)
    if knob.choices is not None:
        return w.Dropdown(options=list(knob.choices), value=value, **kw)
    if knob.type is bool:
        return w.Checkbox(value=value, indent=False, **kw)
    if knob.type is int:
        lo = int(knob.low) if knob.low is not None else -(2**31)
        hi = int(knob.high) if knob.high is not None and knob.high < 2**53 else 2**53
        return w.BoundedIntText(value=value, min=lo, max=hi, **kw)
    if knob.type is float:
        lo = knob.low if knob.low is not None else -1e9
        hi = knob.high if knob.high is not None else 1e9
        return w.BoundedFloatText(value=value, min=lo, max=hi, step=0.05, **kw)
    if knob.type is tuple:
        return w.Text(value=",".join(map(str, value)), placeholder="comma-separated ids", **kw)
    if knob.name == "model":
        from ..models.args import PRESETS

        return w.Combobox(value=value, options=list(PRESETS), ensure_option=False, **kw)
    return w.Text(value=str(value), **kw)


class Panel:
    def __init__(self, session: Session):
        import ipywidgets as w

        self.session = session
        cfg = session.engine.asked.to_dict() if session.engine is not None else {}  # backend='auto' as asked
        self.engine_controls = {n: _widget(k, cfg.get(n, k.default), n) for n, k in ENGINE_KNOBS.items()}
        alias = {v: k for k, v in SAMPLING_ALIASES.items()}
        self.sampling_controls = {n: _widget(k, k.default, alias.get(n, n)) for n, k in SAMPLING_KNOBS.items()
                                  if n != "max_new_tokens"}  # the workload's output_len sets it
        self.workload_controls = {n: _widget(k, k.default, n) for n, k in WORKLOAD_KNOBS.items()}
        self.profile = w.Checkbox(value=False, description="profile (per-op roofline)", indent=False)
        self.traffic_controls = _traffic_widgets()
        self.serve_button = w.Button(description="Serve", button_style="info", icon="random",
                                     tooltip="serve the serving tab's traffic through the scheduler")
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.stop_button = w.Button(description="Stop", button_style="danger", icon="stop", disabled=True)
        self.progress = w.IntProgress(min=0, max=1, value=0, layout=w.Layout(width="240px"))
        self.status = w.HTML("ready")
        self.telemetry = w.HTML("")  # utilisation and memory while a run goes (tuner.profile.telemetry)
        # images stay hidden until they hold a chart (an empty image shows as a broken one)
        self.live = w.Image(format="png", layout=w.Layout(max_width="720px", display="none"))
        self.metrics = w.HTML()
        self.roofline = w.Image(format="png", layout=w.Layout(max_width="560px", display="none"))
        self.breakdown = w.Image(format="png", layout=w.Layout(max_width="560px", display="none"))
        self.history = w.HTML()
        self.compare_button = w.Button(description="Compare last two", icon="columns", disabled=True,
                                       layout=w.Layout(width="auto"),
                                       tooltip="the last two runs side by side: metrics, op-by-op change, step "
                                               "latency and roofline overlaid")
        self.comparison = w.HTML()
        self.compare_steps = w.Image(format="png", layout=w.Layout(max_width="640px", display="none"))
        self.compare_roofline = w.Image(format="png", layout=w.Layout(max_width="640px", display="none"))
        self.errors = w.HTML()

        def grid(controls):
            return w.GridBox(list(controls), layout=w.Layout(grid_template_columns="repeat(3, 270px)"))

        tabs = w.Tab(children=[grid(self.engine_controls.values()), grid(self.sampling_controls.values()),
                               grid([*self.workload_controls.values(), self.profile]),
                               grid(self.traffic_controls.values())])
        for i, title in enumerate(("engine", "sampling", "workload", "serving")):
            tabs.set_title(i, title)
        self.widget = w.VBox([
            w.HTML("<b>tuner</b>: set knobs, then Run. Changing model, dtype or quant reloads weights; "
                   "other knobs reuse them."),
            tabs, w.HBox([self.run_button, self.serve_button, self.stop_button, self.progress, self.status]),
            self.telemetry,
            self.errors,
            self.live, self.metrics, w.HBox([self.roofline, self.breakdown]), self.history, self.compare_button,
            self.comparison, w.HBox([self.compare_steps, self.compare_roofline])])
        self.run_button.on_click(lambda _: self.start())
        self.serve_button.on_click(lambda _: self.start(serve=True))
        self.stop_button.on_click(lambda _: self.stop())
        self.compare_button.on_click(lambda _: self.compare())
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._show_history()

    # -- actions ------------------------------------------------------------------------------------

    def values(self) -> tuple[dict, dict, dict, bool]:
        """The knobs the widgets hold, checked against the registry (ValueError names a bad one)."""
        engine = {n: self._value(ENGINE_KNOBS[n], c) for n, c in self.engine_controls.items()}
        sampling = {n: self._value(SAMPLING_KNOBS[n], c) for n, c in self.sampling_controls.items()}
        workload = {n: self._value(WORKLOAD_KNOBS[n], c) for n, c in self.workload_controls.items()}
        return engine, sampling, workload, bool(self.profile.value)

    @staticmethod
    def _value(knob: Knob, control):
        v = control.value
        return knob.parse(v) if isinstance(v, str) and knob.type is not str else knob.check(v)

    def traffic(self):
        """(tuner.Traffic, SLO) of the serving tab; ValueError names a bad field."""
        from ..serve.metrics import check_slo
        from ..serve.traffic import Traffic

        v = {k: c.value for k, c in self.traffic_controls.items()}
        slo = check_slo({k: v[k] for k in ("ttft_ms", "tpot_ms") if v[k]})
        span = {k: (v[f"{k}_min"], v[f"{k}_max"]) if v[f"{k}_max"] > v[f"{k}_min"] else v[f"{k}_min"]
                for k in ("prompt_len", "output_len")}
        return Traffic(rate=v["rate"] or float("inf"), num_prompts=v["num_prompts"], burstiness=v["burstiness"],
                       max_concurrency=v["max_concurrency"], prefix_len=v["prefix_len"],
                       prefix_fraction=v["prefix_fraction"], **span), slo

    def start(self, serve: bool = False) -> None:
        """Run button (or Serve, serve=True): start on a worker thread (ignored while one is running)."""
        if self.thread is not None and self.thread.is_alive():
            return
        self.errors.value = ""
        try:
            values = self.values()
            traffic = self.traffic() if serve else None
        except ValueError as e:
            self._error(str(e))
            return
        parent = _parent()
        self._stop.clear()
        self.run_button.disabled = self.serve_button.disabled = True
        self.stop_button.disabled = False
        self.status.value = "starting"
        target, args = (self._serve, (values, traffic, parent)) if serve else (self._work, (values, parent))
        self.thread = threading.Thread(target=target, args=args, daemon=True, name="tuner-run")
        self.thread.start()

    def stop(self) -> None:
        """Stop button: the run ends after its current step and keeps what finished."""
        self._stop.set()
        self.status.value = "stopping after this step"

    def wait(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)

    def _work(self, values, parent) -> None:
        _set_parent(parent)
        engine, sampling, workload, profile = values
        steps: list[float] = []
        last = [0.0]

        def loading(done: int, total: int) -> None:
            self.status.value = f"loading weights: layer {done}/{total}"

        def on_step(event: dict) -> bool:
            self.progress.max = max(1, event["total_tokens"])
            self.progress.value = min(self.progress.max, event["done_tokens"])
            if event["phase"] == "decode":
                steps.append(event["step_ms"])
            now = time.monotonic()
            if now - last[0] >= LIVE_INTERVAL_S and len(steps) > 1:
                last[0] = now
                _set_image(self.live, _live_chart(steps))
                self.status.value = f"{event['tokens']} tokens, {fmt.num(event['step_ms'])} ms/step"
                self.telemetry.value = html.escape(telemetry_line(event.get("telemetry")))
            return self._stop.is_set()

        def go():
            result = self.session.run(engine, sampling, workload, profile=profile, on_step=on_step,
                                      progress=loading)
            if len(steps) > 1:
                _set_image(self.live, _live_chart(steps))
            self._show(result)
            return result

        self._attempt(go)

    def _attempt(self, go) -> None:
        """Run go() (it returns the record) on the worker thread: the status says how it ended, an error lands in
        the panel, and the buttons come back."""
        try:
            result = go()
            self.status.value = "stopped: kept what finished" if result.stopped else "done"
        except Exception as e:  # noqa: BLE001 - shown in the panel, never lost to the log console
            self._error(f"{type(e).__name__}: {e}", traceback.format_exc())
            self.status.value = "failed"
        finally:
            self.run_button.disabled = self.serve_button.disabled = False
            self.stop_button.disabled = True

    def _serve(self, values, traffic, parent) -> None:
        _set_parent(parent)
        engine = values[0]
        (traffic, slo) = traffic
        queue: list[tuple[float, int, int]] = []  # (s, running, waiting) after each step
        ttft: list[tuple[float, float]] = []  # (arrival s, TTFT ms) of each finished request
        last = [0.0]

        def on_step(event: dict) -> bool:
            self.progress.max = max(1, event["total_tokens"])
            self.progress.value = min(self.progress.max, event["done_tokens"])
            queue.append((event["elapsed_s"], event["running"], event["waiting"]))
            ttft.extend((a / 1e3, t) for a, t in event["finished"])
            now = time.monotonic()
            if now - last[0] >= LIVE_INTERVAL_S:
                last[0] = now
                _set_image(self.live, _serving_chart(queue, ttft, slo))
                self.status.value = (f"{len(ttft)} of {traffic.num_prompts} requests done, {event['running']} "
                                     f"running, {event['waiting']} waiting")
                self.telemetry.value = html.escape(telemetry_line(event.get("telemetry")))
            return self._stop.is_set()

        def go():
            from ..profile.plots import png

            result = self.session.serve(engine, traffic, slo, on_step=on_step,
                                        progress=lambda d, t: setattr(self.status, "value", f"loading {d}/{t}"))
            _set_image(self.live, _serving_chart(queue, ttft, slo))
            self.metrics.value = f"<pre>{html.escape(result.table())}</pre>"
            _set_image(self.roofline, png(result.plot(), dpi=72))
            self.breakdown.layout.display = "none"
            return result

        self._attempt(go)

    # -- output -------------------------------------------------------------------------------------

    def _show(self, result) -> None:
        self.metrics.value = f"<pre>{html.escape(result.table())}</pre>"
        samples = result.telemetry.get("samples") or [None]
        note = result.telemetry.get("note")
        self.telemetry.value = html.escape(" · ".join(x for x in (telemetry_line(samples[-1]), note) if x))
        if result.ops_records:
            from ..profile.plots import png, roofline, time_breakdown

            _set_image(self.roofline, png(roofline(result)))
            _set_image(self.breakdown, png(time_breakdown(result)))
        self._show_history()

    def _show_history(self) -> None:
        df = self.session.history_frame()
        self.history.value = "" if df.empty else "<b>runs</b>" + fmt.frame(df).to_html(index=False)
        self.compare_button.disabled = len(self.session.history) < 2

    def compare(self) -> None:
        """The last two runs of the history side by side (tuner.compare.Comparison), charts included."""
        from ..profile.plots import png
        from .session import compare

        c = compare(*self.session.history[-2:])
        self.comparison.value = f"<b>A against B</b><pre>{html.escape(c.table())}\n\n{html.escape(c.ops_table())}</pre>"
        for image, draw in ((self.compare_steps, c.plot_steps), (self.compare_roofline, c.plot_roofline)):
            try:
                _set_image(image, png(draw(), dpi=72))
            except ValueError:  # no decode steps, or no op profile in one of the runs: that chart is left out
                image.layout.display = "none"

    def _error(self, message: str, detail: str = "") -> None:
        more = f"<details><summary>traceback</summary><pre>{html.escape(detail)}</pre></details>" if detail else ""
        self.errors.value = f"<div style='color:#b00020'>{html.escape(message)}</div>{more}"


def _set_image(image, data: bytes) -> None:
    image.value = data
    image.layout.display = ""


def _live_chart(steps: list[float]) -> bytes:
    from matplotlib.figure import Figure

    from ..profile.plots import png

    fig = Figure(figsize=(7, 2.2))
    ax = fig.subplots()
    ax.plot(range(1, len(steps) + 1), steps, lw=1.2, color="#1f77b4")
    ax.set(xlabel="decode step", ylabel="ms", ylim=(0, max(steps) * 1.15), title="step latency (live)")
    fig.tight_layout()
    return png(fig, dpi=80)


def _traffic_widgets() -> dict:
    """The serving tab: tuner.Traffic's fields and the SLO (0: no limit), with the Traffic defaults."""
    import ipywidgets as w

    kw = dict(style={"description_width": "initial"}, layout=w.Layout(width="260px"))
    return {
        "rate": w.BoundedFloatText(value=4.0, min=0.0, max=1e6, step=0.5, description="rate req/s (0: all at once)",
                                   **kw),
        "num_prompts": w.BoundedIntText(value=32, min=1, max=1 << 20, description="requests", **kw),
        "burstiness": w.BoundedFloatText(value=1.0, min=0.01, max=100.0, step=0.25,
                                         description="burstiness (1: Poisson)", **kw),
        "prompt_len_min": w.BoundedIntText(value=64, min=1, max=1 << 20, description="prompt tokens from", **kw),
        "prompt_len_max": w.BoundedIntText(value=256, min=1, max=1 << 20, description="prompt tokens to", **kw),
        "max_concurrency": w.BoundedIntText(value=0, min=0, max=1 << 20, description="max in flight (0: any)",
                                            **kw),
        "output_len_min": w.BoundedIntText(value=16, min=1, max=1 << 20, description="output tokens from", **kw),
        "output_len_max": w.BoundedIntText(value=64, min=1, max=1 << 20, description="output tokens to", **kw),
        "prefix_len": w.BoundedIntText(value=0, min=0, max=1 << 20, description="shared prefix tokens", **kw),
        "prefix_fraction": w.BoundedFloatText(value=0.0, min=0.0, max=1.0, step=0.1,
                                              description="share with the prefix", **kw),
        "ttft_ms": w.BoundedFloatText(value=0.0, min=0.0, max=1e9, description="SLO: TTFT ms (0: none)", **kw),
        "tpot_ms": w.BoundedFloatText(value=0.0, min=0.0, max=1e9, description="SLO: TPOT ms (0: none)", **kw),
    }


def _serving_chart(queue: list, ttft: list, slo: dict) -> bytes:
    """Live: running and waiting requests over time; the TTFT of each finished request by its arrival."""
    from matplotlib.figure import Figure

    from ..profile.plots import png

    fig = Figure(figsize=(9, 2.4))
    a, b = fig.subplots(1, 2)
    if queue:
        t, running, waiting = zip(*queue, strict=True)
        a.step(t, running, where="post", label="running")
        a.step(t, waiting, where="post", label="waiting")
        a.legend(fontsize=7)
    a.set(xlabel="s", ylabel="requests", title="queue and batch (live)")
    if ttft:
        b.scatter(*zip(*ttft, strict=True), s=8)
    if "ttft_ms" in slo:
        b.axhline(slo["ttft_ms"], color="#d62728", ls="--", lw=1)
    b.set(xlabel="arrival (s)", ylabel="TTFT ms", title="TTFT of finished requests")
    fig.tight_layout()
    return png(fig, dpi=80)


def _parent():
    try:
        from IPython import get_ipython

        ip = get_ipython()
        return ip.get_parent() if ip is not None and hasattr(ip, "get_parent") else None
    except ImportError:
        return None


def _set_parent(parent) -> None:
    if parent is None:
        return
    from IPython import get_ipython

    ip = get_ipython()
    if ip is not None and hasattr(ip, "set_parent"):
        ip.set_parent(parent)
