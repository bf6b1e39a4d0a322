"""The engine end to end: prompts in every form, workloads, metrics, records, stopping, memory."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import tuner
from conftest import VOCAB, save_checkpoint
from tuner.result import compute_metrics


def test_workload_has_exact_lengths_and_forced_output(checkpoint):
    path, _ = checkpoint("qwen2")
    engine = tuner.Engine(model=str(path), batch_size=3)
    result = engine.generate(tuner.Workload(batch=5, prompt_len=24, output_len=17, seed=3))
    assert result.workload["prompt_lens"] == [24] * 5
    assert [len(t) for t in result.tokens] == [17] * 5
    assert result.sampling["ignore_eos"] is True and result.sampling["max_new_tokens"] == 17
    again = engine.generate(tuner.Workload(batch=5, prompt_len=24, output_len=17, seed=3))
    assert again.tokens == result.tokens


def test_workload_prompts_are_seeded_random_ids_in_the_vocabulary():
    w = tuner.Workload(batch=4, prompt_len=50, output_len=1, seed=9)
    prompts = w.prompts(VOCAB, 4)
    assert prompts == w.prompts(VOCAB, 4) and prompts != tuner.Workload(4, 50, 1, seed=10).prompts(VOCAB, 4)
    flat = [t for p in prompts for t in p]
    assert len(flat) == 200 and 0 <= min(flat) and max(flat) < VOCAB and len(set(flat)) > 100


def test_text_prompts_use_the_checkpoints_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    save_checkpoint(tmp_path, "llama")
    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>").save_pretrained(
        tmp_path)
    engine = tuner.Engine(model=str(tmp_path))
    by_text = engine.generate(["w5 w17 w200", "w9"], tuner.SamplingParams(max_new_tokens=6))
    by_ids = engine.generate([[5, 17, 200], [9]], tuner.SamplingParams(max_new_tokens=6))
    assert by_text.tokens == by_ids.tokens
    assert by_text.text[0] == " ".join(f"w{t}" for t in by_ids.tokens[0])


def test_text_prompts_without_a_tokenizer_say_what_to_pass(checkpoint):
    engine = tuner.Engine(model=str(checkpoint("llama")[0]))
    with pytest.raises(ValueError, match="has no tokenizer: pass token ids or a tuner.Workload"):
        engine.generate(["hello"])


@pytest.mark.parametrize("prompts,message", [
    ([[1, 2, VOCAB]], f"token id {VOCAB} is outside the vocabulary"),
    ([[]], "every prompt needs at least one token"),
    ([], "prompts must be a non-empty list"),
    ([list(range(100))], "a prompt of 100 tokens \\+ max_new_tokens=1000 exceeds max_seq_len=1024"),
])
def test_bad_prompts_are_clear_errors(checkpoint, prompts, message):
    engine = tuner.Engine(model=str(checkpoint("llama")[0]), max_seq_len=1024)
    with pytest.raises(ValueError, match=message):
        engine.generate(prompts, tuner.SamplingParams(max_new_tokens=1000))


def test_metrics_follow_vllm_definitions():
    # request 0: tokens at 10, 14, 20 ms; request 1: at 12, 30 ms; prompts of 5 and 7 tokens
    m = compute_metrics([[10.0, 14.0, 20.0], [12.0, 30.0]], [5, 7])
    assert m["ttft_ms"] == 11.0 and m["ttft_ms_p50"] == 11.0
    assert m["tpot_ms"] == pytest.approx((5.0 + 18.0) / 2)  # (e2e - ttft) / (n - 1) per request
    assert m["itl_ms_p50"] == 6.0 and m["itl_ms"] == pytest.approx((4 + 6 + 18) / 3)  # pooled gaps
    assert m["itl_ms_p99"] == pytest.approx(np.percentile([4, 6, 18], 99))
    assert m["e2e_ms"] == 25.0 and m["duration_s"] == 0.030
    assert m["output_tok_s"] == pytest.approx(5 / 0.030) and m["total_tok_s"] == pytest.approx(17 / 0.030)


def test_run_result_has_every_metric_and_round_trips_through_json(checkpoint):
    engine = tuner.Engine(model=str(checkpoint("qwen3")[0]), batch_size=2, kv_cache="paged")
    result = engine.generate(tuner.Workload(prompt_len=16, output_len=12))
    m = result.metrics
    for key in ("ttft_ms", "tpot_ms", "itl_ms_p50", "itl_ms_p90", "itl_ms_p99", "e2e_ms", "output_tok_s",
                "total_tok_s", "mbu", "mfu", "decode_gbs"):
        assert m[key] is not None and m[key] > 0, key
    assert m["output_tokens"] == 24 and m["ttft_ms"] < m["e2e_ms"]
    assert 0 < m["mbu"] < 1.5
    assert result.hardware["bandwidth_gbs"] > 0 and result.hardware["name"]
    assert result.memory["weights_bytes"] == engine.model.weight_bytes() > 0
    assert result.memory["peak_rss_bytes"] > result.memory["weights_bytes"]
    assert len(result.timings["decode_step_ms"]) == 11
    data = json.loads(result.to_json())
    assert data["schema"] == "tuner.run/1" and data["config"]["kv_cache"] == "paged"
    back = tuner.RunResult.from_json(result.to_json())
    assert back.to_dict() == result.to_dict()
    assert back.ops.empty and "mbu" in repr(back) and "MBU" in back.table()
    with pytest.raises(ValueError, match="not a tuner run record"):
        tuner.RunResult.from_json('{"schema": "other/1"}')


def test_mbu_counts_weights_and_kv_read_per_decode_step(checkpoint):
    engine = tuner.Engine(model=str(checkpoint("llama")[0]), batch_size=2)
    result = engine.generate([[1] * 10, [2] * 20], tuner.SamplingParams(max_new_tokens=3, ignore_eos=True))
    bpt = engine.cache.bytes_per_token
    steps = result.timings["decode_step_ms"]
    # step 1 attends 11 + 21 keys, step 2 attends 12 + 22
    read = 2 * engine.model.decode_weight_bytes() + (32 + 34) * bpt
    expected = read / (sum(steps) / 1e3) / 1e9
    assert result.metrics["decode_gbs"] == pytest.approx(expected)
    assert result.metrics["mbu"] == pytest.approx(expected / result.hardware["bandwidth_gbs"])


def test_queueing_a_step_ahead_keeps_tokens_and_records_only_steps_that_gave_tokens(checkpoint):
    # the host queues step k+1 before it reads step k's tokens: a stop token is seen one step late, and the
    # step queued past it must change nothing
    engine = tuner.Engine(model=str(checkpoint("llama")[0]), batch_size=2)
    prompts = [[3, 1, 4], [2, 7, 1]]
    free = engine.generate(prompts, tuner.SamplingParams(max_new_tokens=12)).tokens
    stop = free[0][3]
    expected = [t[: t.index(stop) + 1] if stop in t else t for t in free]
    result = engine.generate(prompts, tuner.SamplingParams(max_new_tokens=12, stop_token_ids=[stop]))
    assert result.tokens == expected
    assert len(result.timings["decode_step_ms"]) == max(map(len, expected)) - 1


def test_on_step_reports_progress_and_stop_keeps_what_finished(checkpoint):
    engine = tuner.Engine(model=str(checkpoint("llama")[0]), batch_size=2)
    events = []

    def on_step(event):
        events.append(event)
        return event["batch_index"] == 1 and event["phase"] == "decode" and event["tokens"] >= 4

    result = engine.generate(tuner.Workload(batch=6, prompt_len=8, output_len=10), on_step=on_step)
    assert result.stopped
    # batch 0 finished; batch 1 stopped after 2 tokens (on a CPU no step is queued ahead of them)
    assert [len(t) for t in result.tokens] == [10, 10, 2, 2]
    assert events[0]["phase"] == "prefill" and events[0]["n_batches"] == 3
    assert all(e["step_ms"] > 0 for e in events)


def test_dummy_weights_are_seeded():
    engines = [tuner.Engine(model="tiny", seed=s) for s in (1, 1, 2)]
    a, b, c = (e.model.embed.table for e in engines)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() <= 1e-3 and a.abs().max() > 0.9e-3
    ids = [[1, 2, 3]]
    assert torch.equal(engines[0].logits(ids), engines[1].logits(ids))


def test_presets_build_with_real_shapes():
    engine = tuner.Engine(model="smollm2-135m", max_seq_len=256)
    a = engine.args
    assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size) == (576, 30, 9, 3, 49152)
    assert engine.model.lm_head.weight is engine.model.embed.table  # tied: one copy
    assert engine.model.weight_bytes() == a.n_params() * 4
    assert 134e6 < a.n_params() < 135e6
    qwen3 = tuner.EngineConfig(model="qwen3-8b").model_args
    assert (qwen3.head_dim, qwen3.qk_norm, qwen3.n_kv_heads) == (128, True, 8)
    llama = tuner.EngineConfig(model="llama-3.1-8b").model_args
    assert llama.rope_scaling["rope_type"] == "llama3" and 8.0e9 < llama.n_params() < 8.1e9


LOAD_SCRIPT = textwrap.dedent("""
    import json, re, sys
    def status():
        s = open("/proc/self/status").read()
        return {k: int(re.search(k + r":\\s+(\\d+)", s).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}
    import tuner, tuner.engine.engine
    tuner.Engine(model="tiny", max_seq_len=256, **json.loads(sys.argv[2]))  # touch the code pages first
    before = status()["VmRSS"]
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to now
    engine = tuner.Engine(model=sys.argv[1], max_seq_len=256, **json.loads(sys.argv[2]))
    print(json.dumps({"peak": status()["VmHWM"] - before,
                      "final": engine.model.weight_bytes() + engine.cache.nbytes}))
""")


@pytest.fixture(scope="module")
def mid_checkpoints(tmp_path_factory):
    shape = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=16, num_attention_heads=6,
                 num_key_value_heads=6, vocab_size=4096)
    f32, bf16 = tmp_path_factory.mktemp("f32"), tmp_path_factory.mktemp("bf16")
    save_checkpoint(f32, "llama", **shape)
    save_checkpoint(bf16, "llama", dtype=torch.bfloat16, **shape)
    return {"float32": f32, "bfloat16": bf16}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("stored,knobs", [("float32", {}), ("bfloat16", {}), ("float32", {"quant": "int8"}),
                                          ("bfloat16", {"quant": "int4", "group_size": 64})])
def test_peak_memory_while_loading_stays_under_1_3x_the_final_bytes(mid_checkpoints, stored, knobs):
    out = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(mid_checkpoints[stored]), json.dumps(knobs)],
                         capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout)
    assert figures["final"] > 30e6
    assert figures["peak"] <= 1.3 * figures["final"]  # measured here: 1.002x (float) to 1.02x (int4)


def test_checkpoint_reader_reads_zero_size_and_uint16_tensors(tmp_path):
    from safetensors.torch import save_file

    from tuner.models.loader import _Checkpoint

    tensors = {"empty": torch.zeros(0, 4), "u16": torch.tensor([[0, 1, 65535], [7, 300, 2]]).to(torch.uint16),
               "w": torch.arange(8.0).view(2, 4)}
    save_file(tensors, tmp_path / "model.safetensors")
    ckpt = _Checkpoint(tmp_path)
    for name, t in tensors.items():
        dst = torch.empty(t.shape, dtype=t.dtype)
        ckpt.fill(dst, name)
        assert torch.equal(dst, t)
    assert ckpt.used == set(tensors)
    with pytest.raises(ValueError, match=r"checkpoint tensor w has shape \(2, 4\), expected \(4, 2\)"):
        ckpt.fill(torch.empty(4, 2), "w")
