"""Every knob rejects wrong values, and impossible combinations fail, before any weights load."""

import re

import pytest

import tuner
from tuner.knobs import ENGINE_KNOBS, SAMPLING_KNOBS

BAD_ENGINE = {
    "model": [3, None],
    "weights": ["random", ""],
    "device": ["gpu", "cuda:x", 0],
    "dtype": ["fp32", "int8"],
    "backend": ["triton"],
    "batch_size": [0, -1, 4097, 2.5, "8", True],
    "max_seq_len": [8, 2**21],
    "quant": ["int2", "awq"],
    "group_size": [16, 100, 512],
    "kv_cache": ["blocked"],
    "block_size": [4, 24, 256],
    "num_blocks": [-1],
    "kv_dtype": ["int4", "bf16"],
    "cuda_graphs": ["yes", 1],
    "seed": [-1, 1.5],
    "price_per_hour": [-1.0, float("nan"), float("inf"), "cheap", True],
    "scheduling": ["fcfs", "dynamic"],
    "max_num_batched_tokens": [-1, 1.5, 1 << 25],
    "enable_chunked_prefill": ["on", 1],
    "enable_prefix_caching": ["yes", 0],
}
BAD_SAMPLING = {
    "max_new_tokens": [0, -5],
    "temperature": [-0.1, 101.0, float("nan"), "hot"],
    "top_k": [-1, 0.5],
    "top_p": [0.0, 1.01, -0.5],
    "min_p": [-0.1, 1.5],
    "repetition_penalty": [0.0, -1.0],
    "seed": [-3],
    "stop_token_ids": [[-1], ["a"], 1.5],
    "ignore_eos": ["true", 0],
}


def test_every_knob_has_bad_values_under_test():
    assert set(BAD_ENGINE) == set(ENGINE_KNOBS) and set(BAD_SAMPLING) == set(SAMPLING_KNOBS)


@pytest.mark.parametrize("knob,value", [(k, v) for k, vs in BAD_ENGINE.items() for v in vs])
def test_engine_config_rejects_a_wrong_value_naming_the_knob(knob, value):
    with pytest.raises(ValueError, match=rf"^{knob}=") as err:
        tuner.EngineConfig(model="tiny", **{knob: value}) if knob != "model" else tuner.EngineConfig(model=value)
    if ENGINE_KNOBS[knob].choices and not (knob == "device"):
        assert all(repr(c) in str(err.value) for c in ENGINE_KNOBS[knob].choices)


@pytest.mark.parametrize("knob,value", [(k, v) for k, vs in BAD_SAMPLING.items() for v in vs])
def test_sampling_params_reject_a_wrong_value_naming_the_knob_and_its_range(knob, value):
    with pytest.raises(ValueError, match=rf"^{knob}={re.escape(repr(value))} is not allowed: {knob} must be "):
        tuner.SamplingParams(**{knob: value})


def test_range_errors_name_the_range():
    with pytest.raises(ValueError, match=re.escape("top_p=0.0 is not allowed: top_p must be float in (0, 1]")):
        tuner.SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match=re.escape("block_size=24 is not allowed: block_size must be one of "
                                                   "8, 16, 32, 64, 128")):
        tuner.EngineConfig(model="tiny", block_size=24)


@pytest.mark.parametrize("knobs,message", [
    ({"backend": "cupy"}, "backend='cupy' needs a CUDA device"),
    ({"cuda_graphs": True}, "cuda_graphs=True needs a CUDA device"),
    ({"quant": "fp8"}, "quant='fp8' needs a CUDA GPU with compute capability 8.9 or newer"),
    ({"kv_dtype": "fp8"}, "kv_dtype='fp8' needs a CUDA GPU with compute capability 8.9 or newer"),
    ({"model": "smollm2-135m", "quant": "int4", "group_size": 128},
     r"group_size=128 does not divide the input width 576 of wqkv/w13 in smollm2-135m: allowed for this model: "
     r"\[32, 64\]"),
    ({"max_seq_len": 8192}, "max_seq_len=8192 exceeds tiny's max_position_embeddings=4096"),
    ({"kv_cache": "paged", "block_size": 16, "num_blocks": 10, "max_seq_len": 2048},
     "num_blocks=10 cannot hold one sequence of max_seq_len=2048"),
    ({"model": "llama-9b"}, "model='llama-9b' is neither a preset"),
    ({"enable_prefix_caching": True}, "enable_prefix_caching=True shares KV blocks, which needs kv_cache='paged'"),
    ({"enable_chunked_prefill": True}, "enable_chunked_prefill=True splits prompts by the token budget: set "
                                       "max_num_batched_tokens"),
    ({"batch_size": 8, "max_num_batched_tokens": 4}, "max_num_batched_tokens=4 is below batch_size=8"),
])
def test_impossible_combinations_fail_in_the_config(knobs, message):
    with pytest.raises(ValueError, match=message):
        tuner.EngineConfig(**{"model": "tiny", **knobs})


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda_says_so_when_an_engine_is_built_here():
    with pytest.raises(ValueError, match="device='cuda' but CUDA is not available here"):
        tuner.Engine(model="tiny", device="cuda")


def test_float16_on_a_cpu_without_fast_float16_kernels_is_refused_when_an_engine_is_built_here():
    import torch

    from tuner.models.quant import OneDNNLinear

    if OneDNNLinear.available(torch.empty(0, dtype=torch.float16)):  # CPUs with AVX512-FP16 / AMX-FP16
        assert tuner.Engine(model="tiny", dtype="float16").config.dtype == "float16"
    else:
        with pytest.raises(ValueError, match="dtype='float16' has no fast matmul on this CPU"):
            tuner.Engine(model="tiny", dtype="float16")


def test_a_config_from_another_machine_is_valid_here_and_only_an_engine_checks_the_machine(tmp_path):
    # made on a GPU box, with a checkpoint directory that exists only there
    gone = tmp_path / "on-the-gpu-box" / "ckpt"
    cfgs = [tuner.EngineConfig(model="smollm2-135m", device="cuda", dtype="bfloat16", backend="cupy",
                               cuda_graphs=True, quant="fp8", kv_dtype="int8"),
            tuner.EngineConfig(model=str(gone), quant="int4", group_size=32)]
    assert tuner.EngineConfig.from_dict(cfgs[0].to_dict()) == cfgs[0]
    with pytest.raises(ValueError, match="is neither a preset .* nor a directory holding config.json"):
        tuner.Engine(cfgs[1])
    # combinations stay checked anywhere: the preset's shapes still refuse a group that does not divide them
    with pytest.raises(ValueError, match="group_size=128 does not divide"):
        tuner.EngineConfig(model="smollm2-135m", device="cuda", quant="int4", group_size=128)


def test_errors_come_before_any_weights_load(tmp_path, monkeypatch):
    import tuner.engine.engine as engine_module

    calls = []
    monkeypatch.setattr(engine_module, "build_model", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError):
        tuner.Engine(model="smollm2-135m", quant="int4", group_size=256)
    (tmp_path / "config.json").write_text('{"model_type": "llama", "vocab_size": 8, "hidden_size": 8, '
                                          '"num_hidden_layers": 1, "num_attention_heads": 1, "intermediate_size": 8}')
    with pytest.raises(ValueError, match="holds no \\*.safetensors files"):
        tuner.Engine(model=str(tmp_path))
    assert calls == []


def test_replace_revalidates_and_unknown_knobs_are_named():
    cfg = tuner.EngineConfig(model="tiny")
    assert cfg.replace(batch_size=8).batch_size == 8 and cfg.batch_size == 1
    with pytest.raises(ValueError, match="batch_size=0"):
        cfg.replace(batch_size=0)
    with pytest.raises(ValueError, match=r"unknown EngineConfig knob\(s\) \['batchsize'\]"):
        cfg.replace(batchsize=8)
    with pytest.raises(TypeError):
        tuner.EngineConfig(batchsize=8)


def test_knob_parse_reads_command_line_strings():
    assert ENGINE_KNOBS["batch_size"].parse("8") == 8
    assert ENGINE_KNOBS["cuda_graphs"].parse("off") is False
    assert SAMPLING_KNOBS["stop_token_ids"].parse("2, 7") == (2, 7)
    with pytest.raises(ValueError, match="batch_size='eight' is not allowed"):
        ENGINE_KNOBS["batch_size"].parse("eight")


def test_config_round_trips_through_a_dict():
    cfg = tuner.EngineConfig(model="tiny", quant="int8", kv_cache="paged", block_size=32)
    assert tuner.EngineConfig.from_dict(cfg.to_dict()) == cfg
    s = tuner.SamplingParams(top_k=5, stop_token_ids=[3, 4])
    assert s.stop_token_ids == (3, 4) and tuner.SamplingParams.from_dict(s.to_dict()) == s
