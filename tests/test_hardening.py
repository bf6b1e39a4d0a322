"""Bad input and faults, as a demanding user probes tuner: each case gets a one-line error, a refusal, or the
right tokens; nothing a record holds is injected into an exported file, and nothing is written outside its
directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

import tuner
from tuner.config import load_config
from tuner.tune.export import FORMATS, export, export_all

ROOT = Path(__file__).resolve().parent.parent
BASE = {"model": "tiny", "max_seq_len": 64}


@pytest.fixture(scope="module")
def run():
    return tuner.Engine(model="tiny", max_seq_len=64).generate(tuner.Workload(batch=1, prompt_len=8, output_len=3))


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tuner.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=600)


# -- security -----------------------------------------------------------------------------------------------


def test_a_record_cannot_inject_keys_or_lines_into_an_exported_file(run, tmp_path):
    evil = tuner.RunResult.from_dict({
        **run.to_dict(), "run_id": "abc\ntrust-remote-code: true",
        "hardware": {**run.hardware, "name": "cpu\r\nHF_TOKEN=stolen"},
        "workload": {**run.workload, "kind": "tokens\u2028MODEL_ID=evil/model"}})
    paths = export_all(evil, tmp_path)
    vllm = yaml.safe_load(paths["vllm"].read_text())
    assert "trust-remote-code" not in vllm and vllm["model"] != "evil/model"
    for fmt in ("tuner", "vllm", "tgi", "trtllm"):
        text = paths[fmt].read_text()
        assert "\r" not in text and "\u2028" not in text
        for line in text.splitlines():
            assert not line.startswith(("trust-remote-code", "HF_TOKEN", "MODEL_ID=evil")), (fmt, line)
    env = [line for line in paths["tgi"].read_text().splitlines() if line and not line.startswith("#")]
    assert {line.split("=", 1)[0] for line in env} <= {"MODEL_ID", "MAX_BATCH_SIZE", "MAX_TOTAL_TOKENS",
                                                          "MAX_CONCURRENT_REQUESTS", "MAX_INPUT_TOKENS",
                                                          "CUDA_GRAPHS", "QUANTIZE", "DTYPE", "KV_CACHE_DTYPE",
                                                          "MAX_BATCH_PREFILL_TOKENS", "MAX_BATCH_TOTAL_TOKENS",
                                                          "PREFIX_CACHING"}
    assert "abc\\ntrust-remote-code: true" in paths["vllm"].read_text()  # kept, escaped, in the provenance
    # a value that would break a .env line is refused, not written
    broken = tuner.RunResult.from_dict({**run.to_dict(), "config": {**run.config, "model": "/m\nHF_TOKEN=x"}})
    with pytest.raises(ValueError, match="cannot go into a .env file"):
        export(broken, "tgi", tmp_path / "t.env")
    assert "HF_TOKEN" not in yaml.safe_load(export(broken, "vllm", tmp_path / "v.yaml").read_text())


@pytest.mark.parametrize("name", ["../../escape_study", "/tmp/anywhere", "a/b", ".hidden", "x" * 129])
def test_a_study_name_that_would_leave_its_directory_is_refused(name, tmp_path):
    with pytest.raises(ValueError, match="study_name=.* is not allowed: it names files under"):
        tuner.sweep({"batch_size": [1]}, workload={"prompt_len": 4, "output_len": 2}, base=BASE, storage=None,
                    study_name=name, runs_dir=tmp_path / "runs", progress=False)
    assert not (tmp_path / "escape_study").exists() and not (tmp_path / "runs").exists()


def test_a_yaml_alias_bomb_a_huge_file_and_repeated_keys_are_refused_quickly(tmp_path):
    # 1 KB: nine anchors, each a list of nine of the one before (9^9 leaves), the last used as a knob value
    bomb = "  a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"  {c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    (tmp_path / "bomb.yaml").write_text("schema: tuner.config/1\nprovenance:\n" + bomb +
                                        "engine:\n  model: tiny\n  batch_size: *i\nsampling: {}\n")
    good = export(tuner.EngineConfig(model="tiny"), "tuner", tmp_path / "good.yaml").read_text()
    t = time.perf_counter()
    with pytest.raises(ValueError, match=r"batch_size=\[\[\[.{0,120} is not allowed: batch_size must be int"):
        load_config(tmp_path / "bomb.yaml")
    assert time.perf_counter() - t < 60  # 9^9 leaves: formatting them all ran for many minutes
    (tmp_path / "big.yaml").write_text(good + "#" * (2 << 20))
    with pytest.raises(ValueError, match="is at most 1048576"):
        load_config(tmp_path / "big.yaml")
    (tmp_path / "twice.yaml").write_text(good.replace("  batch_size: 1", "  batch_size: 1\n  batch_size: 8"))
    with pytest.raises(ValueError, match=r"twice.yaml is not a tuner configuration: not plain YAML \(line \d+, "
                                         r"column \d+\): the key 'batch_size' is given twice"):
        load_config(tmp_path / "twice.yaml")
    (tmp_path / "latin1.yaml").write_bytes(good.encode() + "# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin1.yaml is not a tuner configuration: not UTF-8 text"):
        load_config(tmp_path / "latin1.yaml")


# -- silent garbage -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("knob,value", [("temperature", 1e-40), ("top_p", 1e-46), ("repetition_penalty", 1e-30)])
def test_positive_values_that_underflow_float32_are_refused(knob, value):
    with pytest.raises(ValueError, match=rf"^{knob}={value!r} is not allowed: .*at least 1e-05"):
        tuner.SamplingParams(**{knob: value})


def test_the_smallest_allowed_sampling_values_give_real_tokens(checkpoint):
    e = tuner.Engine(model=str(checkpoint("llama")[0]), max_seq_len=64)
    greedy = e.generate([[1, 2, 3]], tuner.SamplingParams(max_new_tokens=6)).tokens
    cold = e.generate([[1, 2, 3]], tuner.SamplingParams(max_new_tokens=6, temperature=1e-5, top_p=1e-5,
                                                        repetition_penalty=1e-5)).tokens
    assert len(cold[0]) == 6 and all(0 <= t < e.args.vocab_size for t in cold[0])
    assert e.generate([[1, 2, 3]], tuner.SamplingParams(max_new_tokens=6, temperature=1e-5, seed=3)).tokens == greedy


@pytest.mark.parametrize("prompt", [[1, 2.7, 3], [1, True, 3], [[1.0, 2.0]]])
def test_float_and_bool_token_ids_are_refused_not_truncated(prompt):
    e = tuner.Engine(model="tiny", max_seq_len=256)
    with pytest.raises(ValueError, match="is not an integer: prompts are lists of int token ids"):
        e.generate(prompt if isinstance(prompt[0], list) else [prompt])
    with pytest.raises(ValueError, match="integer"):
        e.logits(__import__("torch").tensor([[1.5, 2.0]]))


def test_a_huge_prompt_length_is_refused_before_a_token_is_made():
    e = tuner.Engine(model="tiny", max_seq_len=64)
    t = time.perf_counter()
    with pytest.raises(ValueError, match="a prompt of 1000000 tokens \\+ max_new_tokens=4 exceeds max_seq_len=64"):
        e.generate(tuner.Workload(batch=1000, prompt_len=1_000_000, output_len=4))
    assert time.perf_counter() - t < 60  # a billion token ids took minutes to make before the check


def test_two_runs_on_one_engine_at_once_each_give_their_own_tokens(checkpoint):
    e = tuner.Engine(model=str(checkpoint("llama")[0]), batch_size=2)
    a, b = [[3, 1, 4, 1, 5], [9, 2, 6]], [[2, 7, 1, 8], [2, 8, 1, 8, 2, 8]]
    solo = [e.generate(p, tuner.SamplingParams(max_new_tokens=24)).tokens for p in (a, b)]
    out = {}

    def go(name, prompts):
        out[name] = e.generate(prompts, tuner.SamplingParams(max_new_tokens=24)).tokens

    threads = [threading.Thread(target=go, args=(n, p)) for n, p in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [out["a"], out["b"]] == solo


# -- clear messages, one line -----------------------------------------------------------------------------------


def test_the_paged_pool_says_how_many_blocks_it_needs_and_has():
    e = tuner.Engine(model="tiny", batch_size=2, kv_cache="paged", block_size=16, num_blocks=4, max_seq_len=64)
    # two sequences of 33 tokens: 66 tokens are about the 64 the pool holds, but each takes 3 whole blocks
    with pytest.raises(tuner.KVCacheFullError, match="the batch needs 66 tokens of KV but the pool holds 4 blocks x "
                                                     "16 = 64 tokens: it needs 6 more blocks .* and 4 are free"):
        e.cache.reserve([33, 33])
    # generate() preempts instead (the scheduler gives a sequence's blocks back and recomputes it later)
    r = e.generate([[1] * 30, [2] * 30], tuner.SamplingParams(max_new_tokens=20, ignore_eos=True))
    assert [len(t) for t in r.tokens] == [20, 20] and r.metrics["preemptions"] >= 1


def test_export_to_a_missing_folder_given_with_a_slash_writes_into_it(run, tmp_path):
    path = export(run, "vllm", f"{tmp_path}/new-folder/")
    assert path == tmp_path / "new-folder" / FORMATS["vllm"] and path.is_file()


def test_cli_checks_its_output_paths_and_flags_before_the_run_and_prints_no_traceback(tmp_path):
    (tmp_path / "afile").write_text("")
    cases = {("--json", str(tmp_path)): "--json .* is a directory",
             ("--logdir", str(tmp_path / "afile")): "--logdir .* is a file",
             ("--threads", "-1"): "is not a whole number of at least 1",
             ("--temperature", "1e-40"): "temperature=1e-40 is not allowed",
             ("--prompt-len", "1000000000"): "prompt_len=1000000000 is not allowed"}
    for flags, message in cases.items():
        res = cli("run", "--model", "tiny", "--no-warmup", "--output-len", "2", *flags)
        assert res.returncode == 2, (flags, res.stderr)
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 3, res.stderr
        assert __import__("re").search(message, res.stderr), (flags, res.stderr)
    res = cli("sweep", str(tmp_path / "s.yaml"), cwd=tmp_path)
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"space": {"batch_size": [1]}, "base": BASE,
                                                     "workload": {"prompt_len": 4, "output_len": 2},
                                                     "study_name": "../../escape_study"}))
    res = cli("sweep", str(tmp_path / "s.yaml"), cwd=tmp_path)
    assert res.returncode == 2 and "study_name='../../escape_study' is not allowed" in res.stderr
    assert not (tmp_path.parent.parent / "escape_study.json").exists()


def test_history_refuses_a_negative_count():
    from IPython.core.error import UsageError
    from IPython.testing.globalipapp import get_ipython

    from tuner.jupyter.magics import TunerMagics

    ip = get_ipython()
    magics = TunerMagics(ip)
    with pytest.raises(UsageError, match="-n -5 is not allowed"):
        magics.tuner("history -n -5")


# -- memory guards and the checkpoint reader ---------------------------------------------------------------------


def test_an_engine_that_cannot_fit_is_refused_before_it_loads_naming_both_figures():
    from tuner.engine.machine import NotEnoughMemoryError

    with pytest.raises(NotEnoughMemoryError, match=r"needs ~\d+\.\d GiB \(weights \d+\.\d, KV cache \d+\.\d\) but "
                                                   r"\d+\.\d GiB are available"):
        tuner.Engine(model="llama-3.1-8b", dtype="float32", batch_size=256, max_seq_len=131072)
    res = cli("run", "--model", "smollm2-135m", "--kv-cache", "paged", "--num-blocks", str(1 << 24))
    assert res.returncode == 2 and res.stderr.startswith("tuner: error: not enough memory for smollm2-135m")


def test_a_prefill_that_cannot_fit_is_refused_before_a_token_is_made():
    from tuner.engine.machine import NotEnoughMemoryError
    from tuner.profile import cost

    e = tuner.Engine(model="smollm2-135m", batch_size=4096, max_seq_len=2048, kv_cache="paged", num_blocks=128)
    # 8.2M prompt tokens at ~105 KB of float32 activations each: ~820 GiB, more than any machine this runs on
    with pytest.raises(NotEnoughMemoryError, match=r"not enough memory to prefill 4096 prompts of 2000 tokens on "
                                                   r"cpu: it needs ~820\.\d GiB of activations but \d+\.\d GiB are "
                                                   "available: lower batch_size or shorten the prompts"):
        e.generate(tuner.Workload(batch=4096, prompt_len=2000, output_len=8))
    # the estimate per token, against the 100-120 KB measured on a 2-core CPU (cost.PREFILL_SLACK)
    assert cost.prefill_bytes(e.args, cost.Precision(4), 1, 1) == 105 * 1024
    small = tuner.Engine(model="tiny", batch_size=2, max_seq_len=64)
    assert small.generate([[1, 2, 3], [4, 5]], tuner.SamplingParams(max_new_tokens=2)).tokens[0]  # small runs pass


def test_the_memory_estimate_is_what_the_engine_then_holds():
    from tuner.profile import cost

    for quant in ("none", "int8", "int4"):
        e = tuner.Engine(model="smollm2-135m", quant=quant, group_size=64, batch_size=2, max_seq_len=128)
        need = cost.memory_bytes(e.args, cost.Precision(4, quant, 64, "auto"), 2 * 128)
        assert need == {"weights": e.model.weight_bytes(), "kv_cache": e.cache.nbytes}


def _config(tmp_path, **fields):
    cfg = {"model_type": "llama", "vocab_size": 32, "hidden_size": 8, "num_hidden_layers": 1,
           "num_attention_heads": 2, "intermediate_size": 16, **fields}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return str(tmp_path)


@pytest.mark.parametrize("fields,message", [
    ({"num_attention_heads": None}, "config.json has no 'num_attention_heads'"),
    ({"num_attention_heads": 0}, "num_attention_heads=0 must be a whole number of at least 1"),
    ({"vocab_size": "32000"}, "vocab_size='32000' must be a whole number"),
    ({"rms_norm_eps": "abc"}, "rms_norm_eps='abc' must be a positive number"),
    ({"num_key_value_heads": 3}, "num_attention_heads=2 is not a multiple of num_key_value_heads=3"),
])
def test_a_broken_config_json_is_one_line_naming_the_file_and_the_key(tmp_path, fields, message):
    path = _config(tmp_path, **fields)
    with pytest.raises(ValueError, match=f"config.json.*{message}|{message}") as err:
        tuner.EngineConfig(model=path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_config_json_that_is_not_an_object_or_not_json_names_the_file(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="config.json holds a list, not a JSON object"):
        tuner.EngineConfig(model=str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": ')
    with pytest.raises(ValueError, match="config.json is not readable JSON"):
        tuner.EngineConfig(model=str(tmp_path))


def test_damaged_shards_are_refused_naming_the_file(tmp_path):
    import torch
    from safetensors.torch import save_file

    from tuner.models.loader import _Checkpoint

    (tmp_path / "a.safetensors").write_bytes(b"\x04\x00\x00\x00")  # a 4-byte file
    with pytest.raises(ValueError, match="a.safetensors is not a readable safetensors file"):
        _Checkpoint(tmp_path)
    save_file({"w": torch.ones(2)}, tmp_path / "a.safetensors")
    save_file({"w": torch.zeros(2)}, tmp_path / "b.safetensors")  # a stale copy of the same tensor
    with pytest.raises(ValueError, match="checkpoint tensor w is in two shards, a.safetensors and b.safetensors"):
        _Checkpoint(tmp_path)
    (tmp_path / "b.safetensors").unlink()
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "c.safetensors"}}))
    with pytest.raises(ValueError, match="lists c.safetensors \\(for w\\), which is not in"):
        _Checkpoint(tmp_path)
    (tmp_path / "model.safetensors.index.json").unlink()
    save_file({"w": torch.tensor([1.0, float("nan")])}, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="checkpoint tensor w in a.safetensors holds NaN or infinite values"):
        _Checkpoint(tmp_path).fill(torch.empty(2), "w")


def _crafted_safetensors(path, header: dict, data: bytes) -> None:
    """A safetensors file written by hand: 8-byte little-endian header length, the JSON header, the data."""
    import struct

    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


FOUR_FLOATS = bytes(range(16))


@pytest.mark.parametrize("header, message", [
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 8]}}, "expected usize"),  # a negative offset
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, "invalid offset for tensor `v`"),  # overlap
    ({"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}, "file not fully covered"),  # past the end
    ({"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 16]}}, "invalid shape, data type, or offset"),
])
def test_a_header_whose_offsets_or_dtype_do_not_match_its_bytes_is_refused_naming_the_file(tmp_path, header,
                                                                                           message):
    from tuner.models.loader import _Checkpoint

    _crafted_safetensors(tmp_path / "model.safetensors", header, FOUR_FLOATS)
    with pytest.raises(ValueError, match=f"model.safetensors is not a readable safetensors file: .*{message}"):
        _Checkpoint(tmp_path)


def test_a_float_weight_relabelled_to_a_dtype_of_the_same_size_is_refused(tmp_path):
    import torch

    from tuner.models.loader import _Checkpoint

    # float32 bytes relabelled int32: the byte ranges still match, so only the dtype can tell
    _crafted_safetensors(tmp_path / "model.safetensors", {"w": {"dtype": "I32", "shape": [4], "data_offsets": [0, 16]}},
                         FOUR_FLOATS)
    with pytest.raises(ValueError, match="tensor w in model.safetensors is stored as int32, where a floating-point "
                                         "weight belongs"):
        _Checkpoint(tmp_path).fill(torch.empty(4), "w")
    # one of two float16 tensors relabelled bfloat16
    file = tmp_path / "model.safetensors"
    _crafted_safetensors(file, {"w": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]},
                                "v": {"dtype": "BF16", "shape": [4], "data_offsets": [8, 16]}}, FOUR_FLOATS)
    with pytest.raises(ValueError, match=r"mixes float16 \(w in model.safetensors\) and bfloat16 \(v in "
                                         r"model.safetensors\) tensors"):
        _Checkpoint(tmp_path)
    # float32 beside bfloat16 is what real checkpoints hold (norms kept in float32): read as stored
    _crafted_safetensors(file, {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                "v": {"dtype": "BF16", "shape": [4], "data_offsets": [8, 16]}}, FOUR_FLOATS)
    ckpt = _Checkpoint(tmp_path)
    dst = torch.empty(4, dtype=torch.bfloat16)
    ckpt.fill(dst, "v")
    assert torch.equal(dst.view(torch.uint8), torch.tensor(list(range(8, 16)), dtype=torch.uint8))


# -- records, sweeps and servers ---------------------------------------------------------------------------------


def test_crafted_records_are_refused_in_one_line(run, tmp_path):
    good = run.to_dict()
    cases = {"no-config.json": {k: v for k, v in good.items() if k != "config"},
             "null-metrics.json": {**good, "metrics": None}, "list.json": [good]}
    for name, data in cases.items():
        (tmp_path / name).write_text(json.dumps(data))
        res = cli("export", str(tmp_path / name), "--out", str(tmp_path / "out"))
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert ("not a complete tuner run record" in res.stderr if name != "list.json" else
                "is neither a run record (tuner.run/1), a serve record (tuner.serve/1) nor a sweep record"
                in res.stderr), res.stderr
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    res = cli("export", str(tmp_path / "deep.json"))
    assert res.returncode == 2 and "is not a readable JSON record" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "run.json").write_text(json.dumps(good))
    res = cli("export", str(tmp_path / "run.json"), "--format", "vllm", "--out", "/proc/version")
    assert res.returncode == 2 and res.stderr.startswith("tuner: error:") and "Traceback" not in res.stderr


@pytest.mark.parametrize("kw,message", [({"n_trials": "many"}, "n_trials='many' is not allowed"),
                                        ({"seed": "abc"}, "seed='abc' is not allowed"),
                                        ({"repeats": -1}, "repeats=-1 is not allowed")])
def test_sweep_arguments_of_the_wrong_kind_are_refused(kw, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        tuner.sweep({"batch_size": [1]}, base=BASE, storage=None, runs_dir=tmp_path, progress=False, **kw)
    with pytest.raises(ValueError, match="step=-1 is not allowed: a range's step is a positive number"):
        tuner.sweep({"temperature": {"low": 0.1, "high": 0.9, "step": -1}}, base=BASE, storage=None,
                    runs_dir=tmp_path, progress=False)


def _hwm() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_each_run_reports_its_own_peak_memory():
    e = tuner.Engine(model="tiny", max_seq_len=64)
    big = bytearray(300 << 20)
    big[::4096] = b"x" * len(big[::4096])  # 300 MB resident before the run: the process's peak so far
    before = _hwm()
    del big
    r = e.generate(tuner.Workload(batch=1, prompt_len=8, output_len=2))
    assert r.memory["peak_rss_scope"] == "run" and "(this run)" in r.table()
    assert r.memory["peak_rss_bytes"] < before - 200e6


def test_ctrl_c_during_a_sweep_is_one_line_and_keeps_the_finished_trials(tmp_path):
    import signal

    import optuna

    spec = tmp_path / "s.yaml"
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    spec.write_text(yaml.safe_dump({"space": {"batch_size": [1, 2, 3, 4, 5, 6, 7, 8]}, "base": BASE,
                                    "workload": {"prompt_len": 8, "output_len": 64}, "sampler": "grid",
                                    "study_name": "cut", "storage": db}))
    proc = subprocess.Popen([sys.executable, "-m", "tuner.cli", "sweep", str(spec)], cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.3)
        try:
            if any(t.state.name == "COMPLETE" for t in optuna.load_study(study_name="cut", storage=db).get_trials()):
                break
        except KeyError:
            continue
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("tuner: interrupted: ")
    record = json.loads((tmp_path / "tuner-runs" / "sweeps" / "cut.json").read_text())
    assert sum(t["state"] == "complete" for t in record["trials"]) >= 1


def test_tensorboard_dies_with_its_cli_and_with_a_killed_parent(tmp_path):
    import signal
    import urllib.request

    from tuner.profile.tensorboard import free_port

    def serving(port: int) -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugins_listing", timeout=2).read()
            return True
        except OSError:
            return False

    def wait(until, seconds=90):
        deadline = time.time() + seconds
        while time.time() < deadline and not until():
            time.sleep(0.3)
        return until()

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    port = free_port()
    cli_proc = subprocess.Popen([sys.executable, "-m", "tuner.cli", "tensorboard", "--logdir", str(tmp_path),
                                 "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait(lambda: serving(port))
    cli_proc.send_signal(signal.SIGHUP)  # the terminal closed
    cli_proc.wait(60)
    assert wait(lambda: not serving(port), 30)
    port = free_port()
    parent = subprocess.Popen([sys.executable, "-c", f"import time, tuner; tuner.tensorboard({str(tmp_path)!r}, "
                               f"{port}); print('up', flush=True); time.sleep(600)"], env=env, stdout=subprocess.PIPE,
                              text=True)
    assert parent.stdout.readline().strip() == "up"
    parent.kill()  # a kernel that exits without --stop, or is killed
    parent.wait()
    assert wait(lambda: not serving(port), 30)


@pytest.mark.parametrize("url,message", [
    ("/etc/passwd/x.db", "is not a database URL"), ("notaurl", "is not a database URL"),
    ("mysql://u@127.0.0.1/db", "cannot be opened \\(ModuleNotFoundError"),
    ("sqlite:////nonexistent/dir/x.db", "the folder /nonexistent/dir does not exist"),
    ("postgresql://u:secret@127.0.0.1:1/db", "'postgresql://u:\\*\\*\\*@127.0.0.1:1/db' cannot be opened"),
])
def test_a_storage_url_that_cannot_serve_is_one_line_and_creates_nothing(url, message, tmp_path):
    with pytest.raises(ValueError, match=message) as err:
        tuner.sweep({"batch_size": [1]}, base=BASE, storage=url, runs_dir=tmp_path, progress=False)
    assert "\n" not in str(err.value) and "secret" not in str(err.value)
    assert not Path("/nonexistent").exists()
    (tmp_path / "notes.db").write_text("not a database")
    with pytest.raises(ValueError, match="notes.db is not a SQLite database"):
        tuner.sweep({"batch_size": [1]}, base=BASE, storage=f"sqlite:///{tmp_path / 'notes.db'}", runs_dir=tmp_path,
                    progress=False)


def test_broken_tokenizer_and_generation_config_files_are_named(checkpoint, tmp_path):
    import shutil

    src, _ = checkpoint("llama")
    for f in src.iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": ')
    with pytest.raises(ValueError, match="generation_config.json is not readable JSON"):
        tuner.Engine(model=str(tmp_path))
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": "two"}')
    with pytest.raises(ValueError, match="eos_token_id='two' is not a token id"):
        tuner.Engine(model=str(tmp_path))
    (tmp_path / "generation_config.json").unlink()
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=f"the tokenizer files in {tmp_path} cannot be read"):
        tuner.Engine(model=str(tmp_path))


def test_ctrl_c_in_a_sweep_waits_for_a_safe_point_outside_a_measurement():
    import signal
    import threading

    from tuner.tune.workers import CtrlC

    with CtrlC() as ctrl_c:
        os.kill(os.getpid(), signal.SIGINT)  # during Optuna's bookkeeping: held back, not raised mid-commit
        time.sleep(0.05)
        assert ctrl_c.pending
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.check()  # the next safe point
        ctrl_c.pending = False
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
        t = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            ctrl_c.run(time.sleep, 30)  # inside a measurement: at once
        assert time.monotonic() - t < 10
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
