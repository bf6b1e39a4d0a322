"""HF transformers is the oracle: same weights, same logits, same greedy tokens."""

import pytest
import torch

import tuner
from conftest import VOCAB, save_checkpoint

FAMILIES = ["llama", "llama3", "llama_bias", "mistral", "qwen2", "qwen3"]


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_hf(checkpoint, family):
    path, hf = checkpoint(family)
    engine = tuner.Engine(model=str(path))
    ids = torch.randint(0, VOCAB, (3, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
    got = engine.logits(ids)
    assert got.dtype == torch.float32 and got.shape == (3, 21, VOCAB)
    assert (got - ref).abs().max().item() <= 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_32_greedy_tokens_match_hf_generate(checkpoint, family):
    path, hf = checkpoint(family)
    engine = tuner.Engine(model=str(path))
    prompt = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=32, do_sample=False)[0, 9:].tolist()
    result = engine.generate([prompt[0].tolist()], tuner.SamplingParams(max_new_tokens=32))
    assert len(ref) == 32
    assert result.tokens == [ref]


def test_sharded_bf16_checkpoint_loads_through_every_shard(tmp_path):
    hf = save_checkpoint(tmp_path, "llama", dtype=torch.bfloat16, max_shard_size="40KB")
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").exists()
    engine = tuner.Engine(model=str(tmp_path))
    ids = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = hf.to(torch.bfloat16).float()(ids).logits  # the bf16-rounded weights, run in float32
    assert (engine.logits(ids) - ref).abs().max().item() <= 1e-4


def test_checkpoint_missing_a_tensor_is_a_clear_error(tmp_path):
    from safetensors.torch import load_file, save_file

    save_checkpoint(tmp_path, "llama")
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="model.layers.1.mlp.up_proj.weight"):
        tuner.Engine(model=str(tmp_path))


def test_unsupported_family_is_rejected_before_loading(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2", "vocab_size": 10}')
    with pytest.raises(ValueError, match="model_type='gpt2' is not supported: tuner runs llama, mistral, qwen2, qwen3"):
        tuner.EngineConfig(model=str(tmp_path))
