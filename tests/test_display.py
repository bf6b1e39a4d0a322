"""What people read: one format per quantity (tuner.fmt) in every table, summary, comparison and report."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import tuner
from tuner import fmt
from tuner.jupyter.session import compare
from tuner.tune import SweepResult, sweep
from tuner.tune.report import write_report

ROOT = Path(__file__).resolve().parent.parent
SCI = re.compile(r"\d\.?\d*e[+-]\d+")  # scientific notation, as in 1.937e+04


def test_numbers_have_three_significant_digits_and_no_scientific_notation():
    cases = {0.00066: "0.000660", 4.123: "4.12", 41.23: "41.2", 412.3: "412", 9665.0: "9665", 19370.4: "19,370",
             0.0: "0", -3.14159: "-3.14", 7: "7", 12345: "12,345", 2.5e-7: "0.00000025", 1e-9: "0",
             None: "n/a", float("nan"): "n/a", float("inf"): "inf"}
    for x, want in cases.items():
        assert fmt.num(x) == want, x


def test_fractions_of_a_whole_are_percents_everywhere():
    assert [fmt.pct(x) for x in (0.1088, 0.0294, 0.0042, 1.0, 0.76, 0.0)] == \
        ["10.9%", "2.94%", "0.420%", "100.0%", "76.0%", "0%"]
    for metric in ("mbu", "mfu", "slo_attainment", "top1_agreement", "greedy_match", "decode_idle_share"):
        assert fmt.value(metric, 0.1088) == "10.9%", metric
    for metric in ("tpot_ms_p99", "output_tok_s", "kl_mean", "decode_gbs"):
        assert fmt.value(metric, 0.1088) == "0.109", metric
    assert fmt.value("usd_per_1m_output_tokens", 0.0208) == "$0.0208"
    assert fmt.value("weights_bytes", 513 * 2**20) == "513 MiB" and fmt.size(1.5 * 2**30) == "1.50 GiB"


def test_a_percentile_of_one_sample_says_so():
    m = {"ttft_ms": 3.31, "ttft_ms_p50": 3.31, "ttft_ms_p90": 3.31, "ttft_ms_p99": 3.31}
    assert fmt.percentiles(m, "ttft_ms", samples=1) == "3.31 (1 sample)"
    m2 = {**m, "ttft_ms_p99": 5.0, "ttft_ms_samples": 8}
    assert fmt.percentiles(m2, "ttft_ms") == "mean 3.31  p50 3.31  p90 3.31  p99 5.00"


@pytest.fixture(scope="module")
def two_runs():
    e = tuner.Engine(model="tiny")
    one = e.generate(tuner.Workload(batch=1, prompt_len=16, output_len=8))
    e2 = tuner.Engine(model="tiny", batch_size=4)
    four = e2.generate(tuner.Workload(batch=4, prompt_len=16, output_len=8))
    return one, four


def test_a_run_table_writes_one_format_per_quantity(two_runs):
    one, four = two_runs
    t = one.table()
    assert "TTFT ms        " in t and "(1 sample)" in t.split("TTFT ms")[1].splitlines()[0]
    assert "e2e ms" in t and "(1 sample)" in t.split("e2e ms")[1].splitlines()[0]
    assert re.search(r"ITL ms\s+mean [\d.]+  p50", t)  # 7 inter-token gaps: real percentiles
    assert re.search(r"MBU \d+\.?\d*%", t) and re.search(r"MFU \d+\.?\d*%", t)
    assert "(1 sample)" not in four.table().split("TTFT ms")[1].splitlines()[0]  # 4 requests
    assert not SCI.search(t) and not SCI.search(four.table())


def test_compare_has_headed_columns_and_the_runs_formats(two_runs):
    one, four = two_runs
    lines = compare(one, four).table().splitlines()
    head = lines[0].split()
    assert head == ["A", one.run_id, "B", four.run_id, "B/A"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:] if line.strip()}
    assert rows["batch_size"] == ["1", "4"]
    a, b, ratio = rows["mbu"]
    assert a == fmt.pct(one.metrics["mbu"]) and b == fmt.pct(four.metrics["mbu"]) and ratio.endswith("x")
    assert rows["tpot_ms"][:2] == [fmt.num(one.metrics["tpot_ms"]), fmt.num(four.metrics["tpot_ms"])]
    assert not SCI.search("\n".join(lines))


def test_history_shows_mbu_as_percent_like_the_summary(two_runs):
    from tuner.jupyter.session import Session

    s = Session()
    s.history += list(two_runs)
    shown = fmt.frame(s.history_frame())
    assert list(shown["mbu"]) == [fmt.pct(r.metrics["mbu"]) for r in two_runs]
    assert all(v.endswith("%") for v in shown["mbu"])
    assert s.history_frame()["mbu"].dtype.kind == "f"  # the frame itself stays numeric for analysis


@pytest.fixture(scope="module")
def infeasible(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep")
    return sweep({"batch_size": [1, 2]}, workload={"prompt_len": 8, "output_len": 4},
                 base={"model": "tiny", "max_seq_len": 32}, constraints=["tpot_ms_p99 <= 0.00001"], sampler="grid",
                 storage=f"sqlite:///{d / 'db.sqlite'}", study_name="none-feasible", runs_dir=d, progress=False), d


def test_a_sweep_with_nothing_feasible_names_the_closest_trial(infeasible):
    result, _ = infeasible
    assert not result.feasible
    line = result.nothing_feasible()
    closest = min(result.trials, key=lambda t: t["metrics"]["tpot_ms_p99"])
    assert line.startswith(f"no trial was feasible: the closest, trial {closest['number']} batch_size=")
    assert f"tpot_ms_p99 was {fmt.num(closest['metrics']['tpot_ms_p99'])} against <= 0.0000100" in line
    assert "x the bound" in line and "\n" not in line
    assert line in result.summary() and "Pareto front" not in result.summary()


def test_the_report_is_self_contained_and_shows_no_python_reprs(infeasible):
    result, d = infeasible
    page = write_report(result, d / "report.html").read_text()
    assert not re.search(r"""\b(src|href)\s*=\s*['"]?(https?:)?//""", page)  # nothing from a CDN or the web
    assert "{'" not in page and "': " not in page and "None" not in page  # no dict reprs
    assert "<th>prompt_len</th><td>8</td>" in page
    assert not SCI.search(page.split("<h2>Trials</h2>")[1].split("</table>")[0])


def test_cli_sweep_with_nothing_feasible_exits_3_with_one_line(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("space: {batch_size: [1]}\nbase: {model: tiny, max_seq_len: 32}\n"
                    "workload: {prompt_len: 8, output_len: 4}\nconstraints: ['tpot_ms_p99 <= 0.00001']\n")
    out = subprocess.run([sys.executable, "-m", "tuner.cli", "sweep", str(spec), "--storage",
                          f"sqlite:///{tmp_path / 'db.sqlite'}", "--n-trials", "1"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(ROOT),
                                                                             **__import__("os").environ})
    assert out.returncode == 3, out.stderr
    lines = [x for x in out.stderr.splitlines() if x.startswith("tuner: ")]
    assert len(lines) == 1 and lines[0].startswith("tuner: no trial was feasible: the closest, trial 0 batch_size=1")


def test_sweep_result_loads_its_record_and_says_the_same(infeasible):
    result, d = infeasible
    again = SweepResult.from_dict(result.to_dict())
    assert again.nothing_feasible() == result.nothing_feasible()


def _check_load_record(load: dict) -> None:
    assert load["cpus"] >= 1 and load["load_avg_1m"] >= 0 and load["seconds"] > 0
    for key in ("others_cpu_share", "steal_share", "own_cpu_share"):
        assert 0 <= load[key] <= 1, (key, load)


def test_a_busy_machine_is_recorded_in_the_run_and_warned_about_in_one_line():
    import os
    import time

    from tuner.profile.load import warning

    e = tuner.Engine(model="tiny", max_seq_len=1024)
    w = tuner.Workload(batch=1, prompt_len=8, output_len=1000)  # long enough for CPU time in 10 ms ticks
    quiet = e.generate(w)
    _check_load_record(quiet.machine_load)
    assert quiet.machine_load["own_cpu_share"] > 0
    # whether this run had the machine to itself is the machine's business (another job may share it): its table
    # warns exactly when its own record says busy, and a record of a quiet machine warns of nothing
    assert ("busy machine" in quiet.table()) == (warning(quiet.machine_load) is not None)
    assert warning({**quiet.machine_load, "others_cpu_share": 0.0, "steal_share": 0.0}) is None
    assert tuner.RunResult.from_dict(quiet.to_dict()).machine_load == quiet.machine_load
    cpus = len(os.sched_getaffinity(0))
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * cpus)]
    try:
        time.sleep(0.5)  # let them take the cores
        busy = e.generate(w)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    _check_load_record(busy.machine_load)
    assert busy.machine_load["others_cpu_share"] > 0.25, busy.machine_load
    first = busy.table().splitlines()[0]
    assert first.startswith("warning") and "busy machine: other processes used" in first
    assert f"on {busy.machine_load['cpus']} CPUs" in first


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory):
    e = tuner.Engine(model="smollm2-135m", batch_size=4, max_seq_len=256)
    e.warmup()
    return e.generate(tuner.Workload(batch=4, prompt_len=64, output_len=8), profile=True,
                      logdir=tmp_path_factory.mktemp("runs"))


def test_roofline_labels_never_overlap_and_the_rest_are_listed(profiled_run):
    from tuner.profile.plots import LABELLED

    fig = profiled_run.roofline()
    renderer = fig.canvas.get_renderer()
    boxes = [a.get_window_extent(renderer) for a in fig.tuner_labels]
    assert 3 <= len(boxes) <= LABELLED
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), (a, b)
    drawn = profiled_run.ops[(profiled_run.ops.flops > 0) & (profiled_run.ops.time_ms > 0)]
    assert len(boxes) + len(fig.tuner_unlabelled) == len(drawn)  # every op named once: on the chart or listed
    labelled = {a.get_text() for a in fig.tuner_labels}
    slowest = drawn.sort_values("time_ms").iloc[-1]
    assert f"{slowest.op} ({slowest.phase})" in labelled
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    hw = profiled_run.hardware
    assert any(t.startswith("memory ") and t.endswith("GB/s") for t in texts)  # the ceilings' values
    assert any(t.startswith("compute ") and "FLOP/s" in t for t in texts)
    assert any(t.startswith("ridge ") and t.endswith("FLOP/B") for t in texts)
    from tuner.profile.plots import si

    assert f"memory {si(hw['bandwidth_gbs'] * 1e9, 'B/s')}" in texts
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"prefill", "decode"} <= set(legend)  # the phase markers explained
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert any(t.endswith("FLOP/s") for t in ticks) and not any("e+" in t or "e-" in t for t in ticks)


def test_knob_effects_read_numbers_in_order_and_parallel_axes_have_ticks(tmp_path):
    r = sweep({"batch_size": [4, 1, 8, 2], "quant": ["none", "int8"]}, workload={"prompt_len": 8, "output_len": 4},
              base={"model": "tiny", "max_seq_len": 32}, sampler="grid", storage=None, runs_dir=tmp_path,
              progress=False)
    fig = r.plot_effects()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "2", "4", "8"]
    assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ["none", "int8"]  # the space's order
    fig = r.plot_parallel()
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["batch size", "quant", "output tok s"]
    texts = {t.get_text() for t in ax.texts}
    assert {"1", "2", "4", "8", "none", "int8"} <= texts


def test_every_chart_leaves_matplotlib_as_it_was(profiled_run, infeasible, tmp_path):
    import matplotlib
    from matplotlib import pyplot as plt

    from tuner.tune.plots import optuna_views

    before, figures = dict(matplotlib.rcParams), plt.get_fignums()
    profiled_run.roofline(), profiled_run.time_breakdown(), profiled_run.step_latency()
    result, _ = infeasible
    result.plot_pareto(), result.plot_effects(), result.plot_parallel()
    views = optuna_views(result)
    assert [t for t, _ in views] == ["parameter importance", "slice", "contour", "parallel coordinates (Optuna)"]
    assert isinstance(views[1][1], bytes) and views[1][1][:4] == b"\x89PNG"
    assert views[2][1] == "needs two knobs or more"  # one knob: no contour, said so
    changed = {k for k, v in matplotlib.rcParams.items() if before[k] != v}
    assert changed == set() and plt.get_fignums() == figures


def test_a_one_point_pareto_front_is_marked(tmp_path):
    r = sweep({"batch_size": [1, 2]}, workload={"prompt_len": 8, "output_len": 4},
              base={"model": "tiny", "max_seq_len": 32}, objectives=["max:output_tok_s", "min:decode_bytes_per_token"],
              sampler="grid", storage=None, runs_dir=tmp_path, progress=False)
    fig = r.plot_pareto()
    front = [line for line in fig.axes[0].lines if line.get_label().startswith("Pareto front")]
    assert len(front) == 1 and front[0].get_marker() == "D"
    assert len(front[0].get_xdata()) == len(r.pareto) >= 1


def test_telemetry_is_sampled_off_the_main_thread_and_kept_in_the_record():
    import psutil

    from tuner.profile.telemetry import INTERVAL_S, line

    e = tuner.Engine(model="tiny", max_seq_len=2048, backend="torch")  # about 2 s: the cpu backend takes 0.5
    seen = []
    r = e.generate(tuner.Workload(batch=1, prompt_len=8, output_len=1500),
                   on_step=lambda ev: seen.append(ev["telemetry"]))
    tel = r.telemetry
    samples = tel["samples"]
    duration = r.metrics["duration_s"]
    assert tel["source"] == "psutil" and tel["interval_s"] == INTERVAL_S
    assert len(samples) >= 2 and abs(len(samples) - duration / INTERVAL_S) <= 2, (len(samples), duration)
    total = psutil.virtual_memory().total
    for s in samples:
        assert 0 <= s["cpu_pct"] <= 100
        assert 0 <= s["process_cpu_pct"] <= 100 * psutil.cpu_count() + 10
        assert 50 * 2**20 < s["rss_bytes"] < total
    ts = [s["t_s"] for s in samples]
    assert ts == sorted(ts) and ts[0] >= INTERVAL_S * 0.9
    assert max(s["process_cpu_pct"] for s in samples) > 0  # this process worked
    assert any(x is not None for x in seen)  # the steps' events carried the newest sample
    assert line(samples[-1]).startswith("CPU ")
    assert tuner.RunResult.from_dict(r.to_dict()).telemetry == tel


def test_comparing_runs_overlays_their_steps_and_roofline_and_tables_each_op(profiled_run, tmp_path):
    from tuner.compare import Comparison

    e = tuner.Engine(model="smollm2-135m", batch_size=4, max_seq_len=256, quant="int8")
    b = e.generate(tuner.Workload(batch=4, prompt_len=64, output_len=8), profile=True, logdir=tmp_path)
    c = compare(profiled_run, b)
    rows = {(r["phase"], r["op"]): r for r in c.ops_rows()}
    qkv = rows["decode", "qkv_proj"]
    a_ms = next(o["time_ms"] for o in profiled_run.ops_records if (o["phase"], o["op"]) == ("decode", "qkv_proj"))
    b_ms = next(o["time_ms"] for o in b.ops_records if (o["phase"], o["op"]) == ("decode", "qkv_proj"))
    assert qkv["A_ms"] == a_ms and qkv["B_ms"] == b_ms
    assert qkv["B_change"] == pytest.approx((b_ms - a_ms) / a_ms)
    text = c.ops_table()
    assert text.splitlines()[0].split() == ["phase", "op", "A", "ms", "B", "ms", "B", "vs", "A"]
    assert "quant" in c.table() and not SCI.search(text)
    fig = c.plot_steps()
    lines = [line for line in fig.axes[0].lines if line.get_label().startswith(("A ", "B "))]
    assert [len(line.get_xdata()) for line in lines] == [len(r.timings["decode_step_ms"]) for r in (profiled_run, b)]
    fig = c.plot_roofline()
    arrows = [a for a in fig.axes[0].texts if a.arrow_patch is not None]
    assert len(arrows) == sum(1 for o in profiled_run.ops_records if o["flops"] > 0 and o["time_ms"] > 0)
    bundle = c._repr_mimebundle_()
    assert bundle["text/html"].count("data:image/png;base64,") == 2
    record = bundle[Comparison.MIME]
    assert record["schema"] == "tuner.compare/1" and record["names"] == ["A", "B"]
    assert [r["run_id"] for r in record["runs"]] == [profiled_run.run_id, b.run_id]
    assert all("tokens" not in r for r in record["runs"])
    three = compare(profiled_run, b, profiled_run)
    assert three.table().splitlines()[0].split()[-2:] == ["B/A", "C/A"]
    with pytest.raises(ValueError, match="two runs or more"):
        Comparison([b])
