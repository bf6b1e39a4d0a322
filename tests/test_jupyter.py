"""The notebook front end: %tuner magics in a real IPython shell, the session, the widget panel driven
by clicks, and the rich display of a run."""

import re
import subprocess
import sys
import time

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

import tuner
from tuner.jupyter.panel import Panel
from tuner.jupyter.session import Session, parse_knobs

MODEL = "smollm2-135m"


@pytest.fixture
def ip(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shell = start_ipython() or get_ipython()  # one test shell per process
    shell.run_line_magic("load_ext", "tuner")
    yield shell
    shell.run_line_magic("unload_ext", "tuner")


def magics(shell):
    return shell.magics_manager.registry["TunerMagics"]


def test_help_documents_every_subcommand_and_knob(ip):
    doc = ip.magics_manager.magics["line"]["tuner"].__doc__
    for sub in ("load", "run", "serve", "panel", "hw", "history", "compare", "tensorboard"):
        assert f"%tuner {sub}" in doc
    assert "batch_size" in doc and "--profile" in doc and "sampling_seed" in doc


def test_load_run_reuses_weights_until_a_weight_knob_changes(ip, tmp_path, capsys):
    ip.run_line_magic("tuner", f"load {MODEL} batch_size=2")
    assert "loaded smollm2-135m" in capsys.readouterr().out
    engine = magics(ip).session.engine
    r = ip.run_line_magic("tuner", "run prompt_len=16 output_len=6 -o")
    assert isinstance(r, tuner.RunResult)
    assert r.config["batch_size"] == 2 and len(r.tokens) == 2 and all(len(t) == 6 for t in r.tokens)
    assert (tmp_path / "tuner-runs" / f"{r.run_id}.json").exists()
    r2 = ip.run_cell_magic("tuner", "run -o", "batch_size=1\nkv_cache=paged\n# a comment\noutput_len=4\n"
                                              "temperature=0.8\nsampling_seed=3")
    s = magics(ip).session
    assert s.engine.model is engine.model  # runtime knobs kept the weights
    assert r2.config["kv_cache"] == "paged" and r2.sampling["seed"] == 3 and len(r2.tokens[0]) == 4
    ip.run_line_magic("tuner", "run quant=int8 output_len=2 prompt_len=8 -o")
    assert s.engine.model is not engine.model  # quantization reloads
    assert len(s.history) == 3
    capsys.readouterr()
    ip.run_line_magic("tuner", "compare -3 -1")
    out = capsys.readouterr().out
    assert "quant" in out and "tpot_ms" in out and r.run_id in out


@pytest.mark.parametrize("line,message", [
    ("run batch_sise=2", "did you mean batch_size"),
    ("run batch_size=0", "batch_size must be int in [1, 4096]"),
    ("run quant=int3", "one of 'none', 'int8', 'int4', 'fp8'"),
    ("run 8", "write key=value"),
    ("frobnicate", "unknown subcommand 'frobnicate'"),
    ("", "needs a subcommand"),
    ("sweep", "takes its space in the cell"),
    ("export out.yaml --best", "no sweep yet"),
    ("export out.yaml --format xml", "argument --format: invalid choice"),
    ("load", "the following arguments are required: model"),
    ("compare -1 -2", "no runs yet"),
    ("load smollm2-135m temperature=0.5", "engine knobs only"),
    ("serve --slo ttft=5", "slo key 'ttft' is not allowed"),
    ("serve temperature=0.5", "takes engine and scheduler knobs"),
    ("serve --capacity", "--capacity needs an SLO"),
])
def test_mistakes_are_one_line_usage_errors(ip, line, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ip.run_line_magic("tuner", line)


def test_serve_magic_serves_traffic_on_the_session_engine_and_keeps_the_record(ip, tmp_path):
    r = ip.run_cell_magic("tuner", "serve --rate 100 --num-prompts 6 --prompt-len 4-12 --output-len 3 -o",
                          "model=tiny\nbatch_size=2\nkv_cache=paged\n--slo ttft_ms=1e5")
    assert isinstance(r, tuner.ServeResult) and r.config["batch_size"] == 2 and r.metrics["finished"] == 6
    assert r.slo == {"ttft_ms": 1e5} and r.metrics["slo_attainment"] == 1.0
    s = magics(ip).session
    assert s.serves == [r] and (tmp_path / "tuner-runs" / "serve" / f"{r.run_id}.json").exists()
    assert "goodput" in r._repr_mimebundle_()["text/plain"]


def test_hw_history_and_panel_fallback_outside_a_kernel(ip, capsys):
    ip.run_line_magic("tuner", "hw")
    assert "memory GB/s" in capsys.readouterr().out
    ip.run_line_magic("tuner", "history")
    assert "no runs yet" in capsys.readouterr().out
    ip.run_line_magic("tuner", "panel")  # a terminal shell has no widget front end
    assert "the panel cannot render here" in capsys.readouterr().out


def test_unload_removes_the_magics(ip):
    ip.run_line_magic("unload_ext", "tuner")
    assert "tuner" not in ip.magics_manager.magics["line"]
    ip.run_line_magic("load_ext", "tuner")
    assert "tuner" in ip.magics_manager.magics["line"]


def test_loading_the_extension_imports_nothing_heavy():
    code = ("import sys; from IPython.testing.globalipapp import start_ipython; ip = start_ipython(); "
            "ip.run_line_magic('load_ext', 'tuner'); "
            "print(sorted(m for m in ('torch', 'ipywidgets', 'optuna', 'seaborn', 'cupy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_parse_knobs_splits_engine_sampling_and_workload():
    engine, sampling, workload = parse_knobs(["batch_size=4", "top_p=0.9", "sampling_seed=7", "seed=1",
                                              "prompt-len=32", "max_new_tokens=5", "stop_token_ids=2,7"])
    assert engine == {"batch_size": 4, "seed": 1}
    assert sampling == {"top_p": 0.9, "seed": 7, "stop_token_ids": (2, 7)}
    assert workload == {"prompt_len": 32, "output_len": 5}


def _panel(tmp_path) -> Panel:
    p = Panel(Session(tmp_path / "runs"))
    p.engine_controls["model"].value = MODEL
    p.workload_controls["prompt_len"].value = 16
    return p


def test_panel_run_button_runs_the_engine_and_fills_the_outputs(tmp_path):
    p = _panel(tmp_path)
    p.engine_controls["batch_size"].value = 2
    p.workload_controls["output_len"].value = 8
    p.profile.value = True
    p.run_button.click()
    assert p.run_button.disabled and not p.stop_button.disabled  # running on its worker thread
    p.wait(300)
    assert not p.thread.is_alive() and p.status.value == "done", p.errors.value
    run = p.session.history[-1]
    assert run.config["batch_size"] == 2 and run.ops_records
    assert "TPOT ms" in p.metrics.value and run.run_id in p.history.value
    for image in (p.live, p.roofline, p.breakdown):
        assert image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert p.progress.value == p.progress.max == 16
    assert not p.run_button.disabled and p.stop_button.disabled
    assert re.fullmatch(r"CPU \d+% \(this process \d+%\), RSS [\d.]+ [MG]iB", p.telemetry.value), p.telemetry.value
    assert run.telemetry["samples"] and run.telemetry["source"] == "psutil"  # kept in the run record
    p.engine_controls["kv_cache"].value = "paged"  # a second run reuses the weights
    model = p.session.engine.model
    p.profile.value = False
    p.run_button.click()
    p.wait(300)
    assert p.session.engine.model is model and len(p.session.history) == 2
    assert p.history.value.count("<tr") == 3  # header + two runs
    assert not p.compare_button.disabled
    p.compare_button.click()  # the two runs side by side: the knob that changed, and their steps overlaid
    assert "kv_cache" in p.comparison.value and "contiguous" in p.comparison.value and "paged" in p.comparison.value
    assert p.compare_steps.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert p.compare_roofline.layout.display == "none"  # the second run has no op profile
    assert "no op-by-op change: run B has no op profile" in p.comparison.value  # said once, not a column of n/a


def test_panel_serve_button_serves_traffic_with_live_charts(tmp_path):
    p = _panel(tmp_path)
    p.engine_controls["model"].value = "tiny"
    p.engine_controls["batch_size"].value = 4
    t = p.traffic_controls
    t["rate"].value, t["num_prompts"].value = 100.0, 12
    t["prompt_len_min"].value, t["prompt_len_max"].value = 8, 24
    t["output_len_min"].value, t["output_len_max"].value = 4, 4
    t["ttft_ms"].value = 1e5
    p.serve_button.click()
    assert p.serve_button.disabled and p.run_button.disabled and not p.stop_button.disabled
    p.wait(300)
    assert p.status.value == "done", p.errors.value
    served = p.session.serves[-1]
    assert served.metrics["finished"] == 12 and served.slo == {"ttft_ms": 1e5}
    assert served.traffic["prompt_len"] == [8, 24] and served.traffic["output_len"] == 4
    assert "goodput" in p.metrics.value and p.progress.value == p.progress.max == 48
    for image in (p.live, p.roofline):
        assert image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert not p.serve_button.disabled and p.stop_button.disabled
    p.engine_controls["enable_chunked_prefill"].value = True  # without a token budget: refused, in the panel
    p.serve_button.click()
    p.wait(60)
    assert p.status.value == "failed" and "set max_num_batched_tokens" in p.errors.value
    assert len(p.session.serves) == 1


def test_panel_stop_interrupts_a_long_run_and_keeps_what_finished(tmp_path):
    p = _panel(tmp_path)
    p.workload_controls["output_len"].value = 1500
    p.run_button.click()
    deadline = time.monotonic() + 120
    while p.progress.value < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    p.stop_button.click()
    p.wait(120)
    run = p.session.history[-1]
    assert run.stopped and 5 <= len(run.tokens[0]) < 1500
    assert p.status.value == "stopped: kept what finished"


def test_panel_shows_errors_in_the_panel(tmp_path):
    p = _panel(tmp_path)
    p.engine_controls["model"].value = "no-such-model"
    p.run_button.click()
    p.wait(60)
    assert p.status.value == "failed"
    assert "no-such-model" in p.errors.value and "traceback" in p.errors.value
    p.sampling_controls["stop_token_ids"].value = "1,x"
    p.run_button.click()  # refused before any thread starts
    assert "stop_token_ids" in p.errors.value and not p.run_button.disabled


def test_run_result_mimebundle_for_notebooks_and_the_lab_renderer(tmp_path):
    e = tuner.Engine(model=MODEL)
    r = e.generate(tuner.Workload(batch=1, prompt_len=8, output_len=4), profile=True, logdir=tmp_path)
    bundle = r._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html", "application/vnd.tuner.run+json"}
    assert bundle["text/plain"] == r.table()
    record = bundle["application/vnd.tuner.run+json"]
    assert record["schema"] == "tuner.run/1" and record["ops"] == r.ops_records
    assert "tokens" not in record and "token_times_ms" not in record["timings"]
    html = bundle["text/html"]
    assert html.count("<img src='data:image/png;base64,") == 3 and "slowest ops" in html and "TPOT" in html
