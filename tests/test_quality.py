"""Quality through the KV cache (tune/quality.py) and the cost of a token (profile/prices.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

import tuner
from conftest import VOCAB, real_file
from tuner.profile.prices import CPU_PER_CORE_HOUR, PRICES, cost_metrics, device_price, per_million
from tuner.tune.quality import compare, greedy_match, quality_table, read_text, reference_text, variants


def test_the_default_text_is_real_prose_read_from_the_standard_library():
    text = reference_text()
    paragraphs = text.split("\n\n")
    assert len(text.split()) > 5000 and len(paragraphs) > 100
    assert ">>>" not in text and all(p[0].isupper() and p.endswith((".", ":")) for p in paragraphs)
    assert "ArgumentParser" in text  # argparse's own documentation strings
    assert reference_text() == text  # the same text every time on one Python


def test_a_quality_text_of_ones_own_is_read_or_refused(tmp_path):
    mine = tmp_path / "mine.txt"
    mine.write_text("The quick brown fox jumps over the lazy dog. " * 30)
    assert read_text(mine).startswith("The quick brown fox")
    (tmp_path / "short.txt").write_text("Too short.")
    with pytest.raises(ValueError, match=r"short.txt has 2 words: give at least 200"):
        read_text(tmp_path / "short.txt")
    with pytest.raises(ValueError, match=r"missing.txt cannot be read as UTF-8 text"):
        read_text(tmp_path / "missing.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00" * 100)
    with pytest.raises(ValueError, match="bin.txt cannot be read as UTF-8 text"):
        read_text(tmp_path / "bin.txt")


@pytest.mark.parametrize("kv_cache", ["contiguous", "paged"])
def test_teacher_forcing_through_the_cache_gives_the_prefill_logits(checkpoint, kv_cache):
    path, _ = checkpoint("llama")
    engine = tuner.Engine(model=str(path), batch_size=3, max_seq_len=64, kv_cache=kv_cache)
    ids = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(5)).tolist()
    scored = engine.score(ids, prefix=7)  # positions 6..38 predict tokens 7..39, 32 of them by decode steps
    assert scored.shape == (3, 33, VOCAB)
    full = engine.logits(ids)[:, 6:39]
    assert (scored - full).abs().max().item() <= 1e-4
    with pytest.raises(ValueError, match="exceed batch_size=3 or max_seq_len=64"):
        engine.score(ids + ids, prefix=7)
    with pytest.raises(ValueError, match="equal-length rows of more than prefix=40 tokens"):
        engine.score(ids, prefix=40)


def test_the_figures_of_known_distributions():
    ref = torch.log_softmax(torch.tensor([[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]]), -1)
    same = compare(ref, ref, [[9, 0, 1]], prefix=1)
    assert same["kl_mean"] == 0 and same["top1_agreement"] == 1.0
    nll = -(ref[0, 0, 0] + ref[0, 1, 1]).item() / 2  # the true next tokens are 0 and 1
    assert same["perplexity"] == pytest.approx(math.exp(nll))
    flat = torch.log_softmax(torch.zeros(1, 2, 3), -1)
    other = compare(ref, flat, [[9, 0, 1]], prefix=1)
    p = ref.exp()
    want = (p * (ref - flat)).sum(-1).flatten()
    assert other["kl_mean"] == pytest.approx(want.mean().item()) and other["kl_p99"] <= want.max().item()
    assert other["top1_agreement"] == 0.5  # a uniform row's argmax is token 0: the first row's, not the second's
    assert greedy_match([[1, 2, 3, 4]], [[1, 2, 9, 4]]) == 0.5 and greedy_match([[1, 2]], [[1, 2]]) == 1.0


def test_variants_cover_every_quant_and_kv_dtype_with_the_model_s_int4_groups():
    v = variants("smollm2-135m", "none,int4", ["auto", "int8"])  # 576 wide: groups of 32 and 64
    assert v == [{"quant": "none", "kv_dtype": "auto"}, {"quant": "none", "kv_dtype": "int8"},
                 {"quant": "int4", "group_size": 32, "kv_dtype": "auto"},
                 {"quant": "int4", "group_size": 64, "kv_dtype": "auto"},
                 {"quant": "int4", "group_size": 32, "kv_dtype": "int8"},
                 {"quant": "int4", "group_size": 64, "kv_dtype": "int8"}]
    with pytest.raises(ValueError, match="quant='int3' is not allowed: quant must be one of 'none'"):
        variants("smollm2-135m", "none,int3", "auto")


def test_tuner_quality_prints_the_table_and_writes_rows(tmp_path, checkpoint):
    path, _ = checkpoint("llama")
    out = tmp_path / "q.json"
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", "quality", "--model", str(path), "--quant", "none,int8",
                           "--kv-dtype", "auto", "--n-seqs", "2", "--seq-len", "40", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["quant", "kv_dtype", "kl_mean", "kl_p99", "top1", "ppl", "greedy"]
    assert lines[1].split()[:3] == ["none", "auto", "0.00000"] and lines[2].split()[:2] == ["int8", "auto"]
    doc = json.loads(out.read_text())
    assert doc["schema"] == "tuner.quality/1" and [r["knobs"]["quant"] for r in doc["rows"]] == ["none", "int8"]
    assert doc["rows"][1]["kl_mean"] > 0 and "[2/2]" in proc.stderr


# -- the real model ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_rows():
    real_file()
    todo = [{"quant": "none", "kv_dtype": "auto"}, {"quant": "none", "kv_dtype": "int8"},
            {"quant": "int8", "kv_dtype": "auto"}, {"quant": "int4", "group_size": 64, "kv_dtype": "auto"},
            {"quant": "int4", "group_size": 32, "kv_dtype": "auto"}]
    rows = quality_table("smollm2-135m-instruct", todo, n_seqs=2, seq_len=64)
    return {(r["knobs"]["quant"], r["knobs"].get("group_size"), r["knobs"]["kv_dtype"]): r for r in rows}


def test_on_the_real_model_kl_orders_none_int8_int4(real_rows):
    none, int8, int4 = real_rows["none", None, "auto"], real_rows["int8", None, "auto"], real_rows["int4", 64, "auto"]
    # measured 2026-12-02 on 4 x 128 tokens: 0, 0.0053 and 0.268 (benchmarks/results/quality-smollm2-*.json)
    assert none["kl_mean"] == 0 and none["top1_agreement"] == 1 and none["greedy_match"] == 1
    assert 1e-4 < int8["kl_mean"] < 0.05 < int4["kl_mean"]
    assert int8["top1_agreement"] > int4["top1_agreement"]
    assert 5 < none["perplexity"] < int4["perplexity"] < 200
    assert not none["dummy"] and none["text_tokens"] > 10000
    # the file's weights are Q4_1 (groups of 32, a scale and a minimum): int4 with groups of 32 re-represents them
    # almost exactly, so it drifts less than per-row int8 does
    assert real_rows["int4", 32, "auto"]["kl_mean"] < int8["kl_mean"]


def test_on_the_real_model_int8_kv_drifts_through_the_cache_a_little(real_rows):
    kv = real_rows["none", None, "int8"]
    assert 0 < kv["kl_mean"] < 0.005 and kv["top1_agreement"] > 0.95  # measured 0.00066 and 98.9% on 4 x 128


# -- cost ---------------------------------------------------------------------------------------------------


def test_the_cost_arithmetic():
    assert per_million(2.99, 1000.0) == pytest.approx(2.99 / 3.6)  # $2.99/h at 1000 tok/s: $0.83 per 1M
    assert per_million(None, 1000.0) is None and per_million(2.0, 0) is None
    assert cost_metrics({"output_tok_s": 50.0, "total_tok_s": 250.0}, 1.8) == pytest.approx(
        {"usd_per_1m_output_tokens": 10.0, "usd_per_1m_tokens": 2.0})
    h100 = device_price({"device": "cuda", "datasheet": {"model": "H100 SXM"}})
    assert h100["price_per_hour"] == PRICES["H100 SXM"][0] and "Lambda" in h100["price_source"]
    cpu = device_price({"device": "cpu", "cores": 8})
    assert cpu["price_per_hour"] == pytest.approx(8 * CPU_PER_CORE_HOUR[0], abs=1e-4)
    assert device_price({"device": "cuda", "datasheet": None})["price_per_hour"] is None
    assert device_price({"device": "cpu", "cores": 2}, override=0.5) == {"price_per_hour": 0.5,
                                                                       "price_source": "price_per_hour (given)"}


def test_every_run_reports_what_its_tokens_cost(tmp_path):
    e = tuner.Engine(model="tiny", max_seq_len=64, price_per_hour=3.6)
    r = e.generate(tuner.Workload(batch=1, prompt_len=8, output_len=6))
    m = r.metrics
    assert r.hardware["price_per_hour"] == 3.6
    assert m["usd_per_1m_output_tokens"] == pytest.approx(1e6 / (m["output_tok_s"] * 1000))
    assert m["usd_per_1m_tokens"] == pytest.approx(1e6 / (m["total_tok_s"] * 1000))
    assert "cost           $" in r.table() and "per 1M output tokens" in r.table()
    vllm = tuner.export(r, "vllm", tmp_path / "v.yaml").read_text()
    assert "# expected cost: $" in vllm and "at $3.6/h" in vllm
    default = e.replace(price_per_hour=0.0).generate(tuner.Workload(batch=1, prompt_len=8, output_len=4))
    assert "cores x $" in default.hardware["price_source"]
