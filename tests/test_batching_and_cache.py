"""Paged and contiguous caches agree; ragged batches give every sequence its solo tokens."""

import pytest
import torch

import tuner
from conftest import VOCAB

SAMPLING = tuner.SamplingParams(max_new_tokens=20)


def prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("block_size", [8, 16])
def test_paged_gives_the_tokens_of_contiguous_across_block_boundaries(checkpoint, block_size):
    path, _ = checkpoint("llama")
    # prompts that end just before, on, and after block boundaries; decoding crosses more of them
    ps = prompts([block_size - 1, block_size, 2 * block_size + 3])
    contiguous = tuner.Engine(model=str(path), batch_size=3).generate(ps, SAMPLING)
    paged = tuner.Engine(model=str(path), batch_size=3, kv_cache="paged", block_size=block_size).generate(ps, SAMPLING)
    assert paged.tokens == contiguous.tokens
    assert all(len(t) == 20 for t in paged.tokens)


@pytest.mark.parametrize("kv_cache", ["contiguous", "paged"])
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_ragged_batch_gives_each_sequence_its_solo_tokens(checkpoint, family, kv_cache):
    path, _ = checkpoint(family)
    ps = prompts([5, 17, 1, 30], seed=1)
    solo_engine = tuner.Engine(model=str(path), kv_cache=kv_cache)
    solo = [solo_engine.generate([p], SAMPLING).tokens[0] for p in ps]
    batched = tuner.Engine(model=str(path), batch_size=4, kv_cache=kv_cache).generate(ps, SAMPLING)
    assert batched.tokens == solo


def test_prompts_beyond_batch_size_run_in_successive_static_batches(checkpoint):
    path, _ = checkpoint("llama")
    ps = prompts([4, 9, 6, 11, 3], seed=2)
    one_batch = tuner.Engine(model=str(path), batch_size=5).generate(ps, SAMPLING)
    result = tuner.Engine(model=str(path), batch_size=2).generate(ps, SAMPLING)
    assert result.tokens == one_batch.tokens
    assert len(result.timings["prefill_ms"]) == 3  # batches of 2, 2 and 1
    # every request arrived at t=0, so the last batch waited for the first two: its TTFT is larger
    ttft = [t[0] for t in result.timings["token_times_ms"]]
    assert ttft[4] > ttft[1] > 0


def test_a_paged_pool_too_small_for_the_batch_preempts_and_every_sequence_keeps_its_solo_tokens(checkpoint):
    path, _ = checkpoint("llama")
    ps = prompts([500, 500, 500, 500], seed=3)  # 4 x 63 blocks fit; the decode growth does not
    sampling = tuner.SamplingParams(max_new_tokens=40)
    solo_engine = tuner.Engine(model=str(path), max_seq_len=2048)
    solo = [solo_engine.generate([p], sampling).tokens[0] for p in ps]
    engine = tuner.Engine(model=str(path), batch_size=4, kv_cache="paged", block_size=8, num_blocks=260,
                          max_seq_len=2048)
    result = engine.generate(ps, sampling)
    assert result.metrics["preemptions"] >= 1  # the newest sequence gave its blocks back and was recomputed
    assert result.tokens == solo
    # the pool is whole again: a batch that fits runs without preemption
    again = engine.generate(prompts([20, 20]), SAMPLING)
    assert len(again.tokens) == 2 and again.metrics["preemptions"] == 0


def test_block_allocator_reuses_released_blocks():
    from tuner.engine.kv_cache import BlockAllocator

    alloc = BlockAllocator(4, 16)
    first = alloc.allocate(3, 48)
    assert first == [0, 1, 2] and len(alloc.free) == 1
    alloc.release(first)
    assert sorted(alloc.allocate(4, 64)) == [0, 1, 2, 3]
    with pytest.raises(tuner.KVCacheFullError):
        alloc.allocate(1, 65)


@pytest.mark.parametrize("T", [1, 3])  # 1: the decode path (batched matmuls), 3: prefill (SDPA)
def test_attention_serves_each_query_group_from_its_kv_head_without_repeating_it(T):
    """GQA without materializing repeated K/V: attention() matches an explicit repeat_interleave reference."""
    from tuner.backends.torch_ops import attention

    g = torch.Generator().manual_seed(0)
    B, H, Hkv, D, L = 2, 8, 2, 16, 11
    q = torch.randn(B, T, H, D, generator=g)
    k, v = torch.randn(B, Hkv, L, D, generator=g), torch.randn(B, Hkv, L, D, generator=g)
    q_pos = torch.arange(L - T, L) - 1  # the last key is masked for every query
    mask_t = torch.arange(L)[None, :] <= q_pos[:, None]  # [T, L]
    got = attention(q, k, v, mask_t.repeat(H // Hkv, 1)[None, None])
    kr, vr = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
    ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), kr, vr, attn_mask=mask_t)
    assert (got - ref.transpose(1, 2).reshape(B, T, H * D)).abs().max() < 1e-5
