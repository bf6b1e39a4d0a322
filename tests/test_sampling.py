"""Sampling restricts the support as specified, reproduces with a seed, and penalizes what it should."""

import math

import pytest
import torch

import tuner
from conftest import save_checkpoint
from tuner.engine.sampling import apply_repetition_penalty, filtered_probs, sample

P = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
LOGITS = P.log()[None]


def params(**kw):
    return tuner.SamplingParams(temperature=kw.pop("temperature", 1.0), **kw)


def support(probs):
    return torch.nonzero(probs[0] > 0).flatten().tolist()


def test_temperature_one_keeps_the_distribution():
    assert torch.allclose(filtered_probs(LOGITS, params()), P[None], atol=1e-6)


def test_temperature_flattens_as_p_to_the_one_over_t():
    expected = P.sqrt() / P.sqrt().sum()
    assert torch.allclose(filtered_probs(LOGITS, params(temperature=2.0)), expected[None], atol=1e-6)


def test_top_k_keeps_the_k_most_likely_renormalized():
    probs = filtered_probs(LOGITS, params(top_k=2))
    assert support(probs) == [0, 1]
    assert torch.allclose(probs[0, :2], torch.tensor([4 / 7, 3 / 7]), atol=1e-6)


@pytest.mark.parametrize("top_p,kept", [(0.4, [0]), (0.41, [0, 1]), (0.7, [0, 1]), (0.71, [0, 1, 2]),
                                        (1.0, [0, 1, 2, 3, 4])])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    assert support(filtered_probs(LOGITS, params(top_p=top_p))) == kept


@pytest.mark.parametrize("min_p,kept", [(0.3, [0, 1, 2]), (0.5, [0, 1]), (0.8, [0]), (0.0, [0, 1, 2, 3, 4])])
def test_min_p_drops_tokens_below_min_p_times_the_top(min_p, kept):
    assert support(filtered_probs(LOGITS, params(min_p=min_p))) == kept


def test_filters_compose_top_k_then_top_p():
    probs = filtered_probs(LOGITS, params(top_k=3, top_p=0.5))  # top-3 renormalized: .47, .35, .18
    assert support(probs) == [0, 1]


def test_draws_follow_the_filtered_distribution():
    g = torch.Generator().manual_seed(0)
    n = 40000
    draws = sample(LOGITS.expand(n, -1), params(top_k=3), g)
    freq = torch.bincount(draws, minlength=5).float() / n
    expected = torch.tensor([0.4, 0.3, 0.15, 0, 0]) / 0.85
    assert freq[3] == 0 and freq[4] == 0
    assert (freq - expected).abs().max() < 0.01  # about 4 standard errors at n=40000


def test_greedy_is_argmax_whatever_the_other_knobs():
    assert sample(LOGITS, tuner.SamplingParams(temperature=0.0, top_k=3), torch.Generator()).tolist() == [0]


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.5]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 0.5]]


def test_the_same_seed_gives_the_same_tokens_and_another_seed_others(checkpoint):
    engine = tuner.Engine(model=str(checkpoint("llama")[0]), batch_size=2)
    prompts = [[1, 2, 3], [4, 5, 6, 7]]
    run = lambda seed: engine.generate(prompts, tuner.SamplingParams(max_new_tokens=24, temperature=1.0,
                                                                     top_p=0.95, seed=seed)).tokens
    first = run(7)
    assert run(7) == first
    assert run(8) != first


def test_repetition_penalty_stops_greedy_repeats(checkpoint):
    engine = tuner.Engine(model=str(checkpoint("llama")[0]))
    prompt = [11, 12, 13]
    plain = engine.generate([prompt], tuner.SamplingParams(max_new_tokens=40)).tokens[0]
    assert len(set(plain)) < len(plain)  # this random model loops under greedy decoding
    penalized = engine.generate([prompt], tuner.SamplingParams(max_new_tokens=40, repetition_penalty=5.0)).tokens[0]
    assert len(set(penalized)) == len(penalized) and not set(penalized) & set(prompt)


def test_stop_token_ends_the_sequence_and_is_kept(checkpoint):
    engine = tuner.Engine(model=str(checkpoint("llama")[0]))
    free = engine.generate([[3, 1, 4]], tuner.SamplingParams(max_new_tokens=30)).tokens[0]
    stop = free[5]
    first = free.index(stop)
    stopped = engine.generate([[3, 1, 4]], tuner.SamplingParams(max_new_tokens=30, stop_token_ids=[stop])).tokens[0]
    assert stopped == free[: first + 1]


def test_eos_from_the_checkpoint_stops_unless_ignore_eos(tmp_path, checkpoint):
    free = tuner.Engine(model=str(checkpoint("llama")[0])).generate(
        [[3, 1, 4]], tuner.SamplingParams(max_new_tokens=30)).tokens[0]
    eos = free[4]
    save_checkpoint(tmp_path, "llama", eos_token_id=eos)  # same seed: same weights, now with an EOS id
    engine = tuner.Engine(model=str(tmp_path))
    assert engine.eos_ids == (eos,)
    ended = engine.generate([[3, 1, 4]], tuner.SamplingParams(max_new_tokens=30)).tokens[0]
    assert ended == free[: free.index(eos) + 1]
    forced = engine.generate([[3, 1, 4]], tuner.SamplingParams(max_new_tokens=30, ignore_eos=True)).tokens[0]
    assert forced == free and len(forced) == 30


def test_exponential_race_is_unbiased_for_a_two_token_coin():
    g = torch.Generator().manual_seed(1)
    logits = torch.tensor([[math.log(0.25), math.log(0.75)]]).expand(20000, -1)
    assert abs(sample(logits, params(), g).float().mean().item() - 0.75) < 0.015
