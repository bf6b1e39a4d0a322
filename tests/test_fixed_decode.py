"""The cupy backend's fixed-shape decode step and the kernels' torch twins, checked on CPU.

The step (Transformer.decode) runs here through tuner.backends.torch_ops, the twins of kernels/*.cu, so
its plumbing (positions, block tables, fused residual adds, the sampler's random state) is proven without a
GPU; the GPU suite then checks each kernel against these twins.
"""

import dataclasses

import pytest
import torch

import tuner
from conftest import VOCAB
from tuner.backends import torch_ops
from tuner.engine.kv_cache import KVCache, PagedKVCache
from tuner.engine.sampling import filtered_probs
from tuner.models.args import resolve_model
from tuner.models.model import rope_tables
from tuner.models.quant import Int4Linear, Int8Linear

SAMPLING = tuner.SamplingParams(max_new_tokens=12)


def prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


def fixed(engine):
    engine.fixed_decode = True  # the cupy backend's decode path, with the torch twins as its ops
    return engine


@pytest.mark.parametrize("kv_cache,kv_dtype", [("contiguous", "auto"), ("paged", "auto"), ("paged", "int8")])
@pytest.mark.parametrize("family", ["llama", "qwen3", "qwen2"])
def test_fixed_decode_step_gives_the_tokens_of_the_forward_path(checkpoint, family, kv_cache, kv_dtype):
    path, _ = checkpoint(family)
    ps = prompts([3, 17, 9], seed=2)
    knobs = dict(model=str(path), batch_size=3, kv_cache=kv_cache, block_size=8, kv_dtype=kv_dtype)
    ref = tuner.Engine(**knobs).generate(ps, SAMPLING)
    got = fixed(tuner.Engine(**knobs)).generate(ps, SAMPLING)
    assert got.tokens == ref.tokens
    assert all(len(t) == 12 for t in got.tokens)


def test_fixed_decode_logits_match_the_forward_path(checkpoint):
    path, _ = checkpoint("llama")
    e = tuner.Engine(model=str(path), batch_size=2, kv_cache="paged", block_size=8)
    ps = prompts([6, 11], seed=3)
    full = e.logits(torch.tensor(ps[0] + ps[0][:1]))[0, -1]
    # prefill the prompts through the engine's forward path, then one fixed-shape step for the extra token
    e.cache.reset()
    e.cache.reserve([7, 12])
    lens = [6, 11]
    T = 11
    padded = torch.zeros(2, T, dtype=torch.long)
    for b, p in enumerate(ps):
        padded[b, : len(p)] = torch.tensor(p)
    e.model.forward(padded, e._prefill_step(lens, T, write=True), e.cache, torch_ops, last=torch.tensor(lens) - 1)
    step_logits = e._fixed_decode(torch.tensor([p[0] for p in ps]), torch.tensor(lens), lens)  # one more token each
    torch.testing.assert_close(step_logits[0], full, rtol=1e-4, atol=1e-4)


def _args():
    args, _ = resolve_model("tiny")
    return dataclasses.replace(args, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16)


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("kv_dtype", ["auto", "int8"])
def test_rope_kv_write_twin_is_rope_then_cache_write(paged, kv_dtype):
    a = _args()
    g = torch.Generator().manual_seed(0)
    B, H, Hkv, D = 3, a.n_heads, a.n_kv_heads, a.head_dim
    make = (lambda: PagedKVCache(a, B, 64, torch.float32, kv_dtype, torch.device("cpu"), 8)) if paged else \
        (lambda: KVCache(a, B, 64, torch.float32, kv_dtype, torch.device("cpu")))
    c1, c2 = make(), make()
    for c in (c1, c2):
        c.reserve([40, 9, 23])
    cos, sin = rope_tables(a, 64, "cpu", torch.float32)
    qkv = torch.randn(B, (H + 2 * Hkv) * D, generator=g)
    pos = torch.tensor([39, 8, 22])
    q = torch_ops.rope_kv_write(qkv, None, 1e-6, pos.int(), cos, sin, c1, 1, c1.decode_tables(B), c1.block_len, H, Hkv)
    x = qkv.view(B, 1, H + 2 * Hkv, D)
    qk = torch_ops.rope(x[:, :, : H + Hkv], cos[pos][:, None, None], sin[pos][:, None, None])
    c2.write(1, qk[:, 0, H:], x[:, 0, H + Hkv:], c2.slots(torch.arange(B), pos))
    torch.testing.assert_close(q, qk[:, 0, :H])
    assert torch.equal(c1.k, c2.k) and torch.equal(c1.v, c2.v)
    assert c1.k[1].abs().sum() > 0 and c1.k[0].abs().sum() == 0  # layer 1 written, layer 0 untouched


def _filled_cache(paged: bool, lens: list[int], seed: int):
    """A float32 CPU cache (paged in blocks of 8, or contiguous) whose row b holds lens[b] random K/V tokens in
    layer 0; returns it, each row's (k, v) and a random query per row."""
    a = _args()
    g = torch.Generator().manual_seed(seed)
    B, H, Hkv, D = len(lens), a.n_heads, a.n_kv_heads, a.head_dim
    c = PagedKVCache(a, B, 64, torch.float32, "auto", torch.device("cpu"), 8) if paged else \
        KVCache(a, B, 64, torch.float32, "auto", torch.device("cpu"))
    c.reserve(lens)
    kvs = []
    for b, n in enumerate(lens):
        k, v = torch.randn(n, Hkv, D, generator=g), torch.randn(n, Hkv, D, generator=g)
        c.write(0, k, v, c.slots(torch.full((n,), b), torch.arange(n)))
        kvs.append((k, v))
    return c, kvs, torch.randn(B, H, D, generator=g)


@pytest.mark.parametrize("paged", [False, True])
def test_decode_attention_twin_matches_cache_read_and_attention(paged):
    lens = [33, 5, 17]
    c, _, q = _filled_cache(paged, lens, seed=1)
    B = len(lens)
    out = torch_ops.decode_attention(q, c, 0, c.decode_tables(B), c.block_len, torch.tensor(lens))
    for b, n in enumerate(lens):
        k, v = c.read(0, B, max(lens))
        ref = torch_ops.attention(q[b:b + 1, None], k[b:b + 1, :, :n], v[b:b + 1, :, :n], None)[0, 0]
        torch.testing.assert_close(out[b], ref, rtol=1e-5, atol=1e-5)


def test_splitmix64_twin_gives_the_reference_values():
    # splitmix64 seeded with 0: the first outputs of the reference generator (Vigna)
    x = torch.tensor([0, 0x9E3779B97F4A7C15 - (1 << 64)])
    got = [v & ((1 << 64) - 1) for v in torch_ops.splitmix64(x).tolist()]
    assert got == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4]


@pytest.mark.parametrize("top_k,top_p,min_p", [(0, 1.0, 0.0), (50, 1.0, 0.0), (0, 0.9, 0.0), (40, 0.8, 0.05),
                                               (0, 1.0, 0.1)])
def test_fused_sampler_keeps_exactly_the_tokens_of_the_reference_filters(top_k, top_p, min_p):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(6, 1000, generator=g) * 3
    params = tuner.SamplingParams(temperature=0.8, top_k=top_k, top_p=top_p, min_p=min_p)
    keep = torch_ops.fused_keep(logits, 0.8, top_k, top_p, min_p)
    assert torch.equal(keep, filtered_probs(logits, params) > 0)
    assert 0 < keep.sum() < keep.numel() or (top_k, top_p, min_p) == (0, 1.0, 0.0)


def test_fused_sampler_draws_from_the_filtered_distribution_and_advances_its_offset():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0, 0.0]]).repeat(4000, 1)
    params = tuner.SamplingParams(temperature=1.0, top_k=4)
    rng = torch.tensor([7, 0, 0])
    tokens = torch_ops.sample_fused(logits, params, rng)
    assert rng.tolist() == [7, 1, 0]
    freq = torch.bincount(tokens, minlength=6).float() / len(tokens)
    p = filtered_probs(logits[:1], params)[0]
    assert freq[4] == 0 and freq[3] == 0 or p[3] > 0
    assert (freq - p).abs().max() < 0.03, (freq, p)
    again = torch_ops.sample_fused(logits, params, torch.tensor([7, 0, 0]))
    assert torch.equal(again, tokens)  # the same (seed, offset) gives the same draw
    other = torch_ops.sample_fused(logits, params, rng)  # the next offset gives another
    assert not torch.equal(other, tokens)


def test_quantized_linear_twins_match_the_layers():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(24, 128, generator=g)  # N % 16 != 0 and native=False keep the twins' nibble layout on CPU
    x = torch.randn(3, 128, generator=g)
    l8 = Int8Linear(w, native=False)
    torch.testing.assert_close(torch_ops.int8_linear(x, l8.weight, l8.scale, None), x @ l8.dequantize().t(),
                               rtol=1e-2, atol=1e-2)
    l4 = Int4Linear(w, None, 32, native=False)
    assert not l4.packed_cpu and not l4.native
    torch.testing.assert_close(torch_ops.int4_linear(x, l4.weight, l4.scale, l4.zero, None, 32),
                               x @ l4.dequantize().t(), rtol=1e-2, atol=1e-2)


def test_cuda_graphs_and_the_cupy_backend_need_cuda():
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        tuner.EngineConfig(device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="CUDA device"):
        tuner.EngineConfig(device="cpu", backend="cupy")


def test_cupy_backend_explains_what_it_cannot_serve():
    from tuner.backends import cupy_ops

    assert cupy_ops.supported(128, torch.bfloat16, 32, 8) is None
    assert "head_dim" in cupy_ops.supported(96, torch.bfloat16, 32, 8)
    assert "float16" in cupy_ops.supported(128, torch.float32, 32, 8)
    assert "query groups" in cupy_ops.supported(64, torch.bfloat16, 32, 2)


def test_attention_split_fills_the_gpu_once_and_never_spills_into_a_second_wave():
    from tuner.backends.cupy_ops import part_size

    slots = 132 * 4  # an H100/H200: 132 SMs, 4 attention blocks resident per SM
    # the splits the H200 measured best (benchmarks/results/gpu_suite-2026-11-26-h200-458af3a.json)
    assert part_size(64, 4096, slots) == 512  # batch 8 x 8 KV heads: 8 partitions, one wave (77 us)
    assert part_size(8, 192, slots) == 32  # batch 1, 192 tokens: 6 partitions of 32 (6.4 us; 64: 7.4 us)
    assert part_size(8, 4096, slots) == 64
    # context 16384 at batch 8 took 9 partitions (1.09 waves) before: now 8, one wave
    assert part_size(64, 16384, slots) == 2048
    for pairs in (1, 8, 64, 256, 600, 2048):
        for max_len in (1, 31, 192, 1000, 4096, 16384):
            ps = part_size(pairs, max_len, slots)
            parts = -(-max_len // ps)
            assert ps % 32 == 0 and ps * parts >= max_len > ps * (parts - 1)
            assert pairs * parts <= slots or parts == 1, (pairs, max_len, ps)


def test_attention_indexes_kv_blocks_by_shift_and_refuses_other_block_sizes():
    from tuner.backends.cupy_ops import block_shift

    assert [block_shift(b, 64) for b in (8, 16, 32, 64, 128)] == [3, 4, 5, 6, 7]
    assert block_shift(3072, 1) == 30  # a contiguous cache: one block per sequence, table one wide
    with pytest.raises(ValueError, match="power of two tokens, not 24"):
        block_shift(24, 8)



def test_every_query_group_the_backend_serves_is_a_variant_the_compile_tests_build():
    from tuner.backends import cupy_ops

    built = [d for f, d in cupy_ops.variants() if f == "attention.cu"]
    for D in cupy_ops.HEAD_DIMS:
        for Hkv in (1, 2, 4, 8):
            for G in range(1, 17):
                why = cupy_ops.supported(D, torch.bfloat16, G * Hkv, Hkv)
                for scalar in cupy_ops.SCALARS.values():
                    for kv in (0, 1):
                        wanted = cupy_ops._attention_defines(scalar, D, kv, G)
                        assert (why is None) == (wanted in built), (D, G, why)
                assert (why is None) == (G <= 8), (D, G, why)
    assert {d["G"] for d in built} == set(range(1, 9))


def test_the_attention_plan_refuses_a_context_its_grid_does_not_cover():
    from tuner.backends.cupy_ops import AttentionPlan

    plan = AttentionPlan(8, 32, 8, 128, 4096, torch.device("cpu"), sms=132)
    assert plan.capacity == plan.num_parts * plan.part_size >= 4096
    plan.check(1)
    plan.check(plan.capacity)
    with pytest.raises(ValueError, match=f"planned for contexts of up to {plan.capacity} tokens .* not "
                                         f"{plan.capacity + 1}"):
        plan.check(plan.capacity + 1)


@pytest.mark.parametrize("paged", [False, True])
def test_decode_attention_twin_gives_zeros_for_a_sequence_with_no_keys(paged):
    lens = [0, 9, 0]
    c, kvs, q = _filled_cache(paged, lens, seed=2)
    B, (k, v) = len(lens), kvs[1]
    out = torch_ops.decode_attention(q, c, 0, c.decode_tables(B), c.block_len, torch.tensor(lens))
    assert torch.isfinite(out).all()
    assert out[0].abs().sum() == 0 and out[2].abs().sum() == 0
    ref = torch_ops.attention(q[1:2, None], k.transpose(0, 1)[None], v.transpose(0, 1)[None], None)[0, 0]
    torch.testing.assert_close(out[1], ref, rtol=1e-5, atol=1e-5)


def test_kernels_take_only_dense_aligned_tensors_checked_where_they_are_handed_over():
    from tuner.backends.cupy_ops import _p

    x = torch.zeros(4, 64, dtype=torch.bfloat16)
    assert int(_p(x)) == x.data_ptr() and int(_p(None)) == 0
    with pytest.raises(ValueError, match="aligned to 16 bytes; this torch.bfloat16 tensor starts 2 bytes past"):
        _p(x.view(-1)[1:])
    with pytest.raises(ValueError, match=r"has strides \(64, 2\) for shape \(4, 32\)"):
        _p(x[:, ::2])
    assert int(_p(x.view(-1)[2:], 4)) == x.data_ptr() + 4  # a scalar-read tensor needs its element's alignment
    qkv = torch.zeros(4, 96, dtype=torch.bfloat16)[:, :64]  # strided rows, each dense: what rope_kv_write takes
    assert int(_p(qkv, rows=True)) == qkv.data_ptr()
    with pytest.raises(ValueError, match="strides"):
        _p(qkv)
    with pytest.raises(ValueError, match="strides"):
        _p(torch.zeros(4, 68, dtype=torch.bfloat16)[:, :64], rows=True)  # rows 136 bytes apart: not 16-aligned


def test_the_cupy_kernels_32_bit_kv_offsets_are_checked_when_the_config_is_made(tmp_path):
    import json

    from tuner.backends.cupy_ops import stride_limit

    assert stride_limit(8, 128, 1 << 20) is None  # llama-3.1-8b's 8 KV heads x 128: rows up to 2**21 tokens
    assert "use rows of at most 2097151 tokens" in stride_limit(8, 128, 1 << 21)
    # a model with 64 KV heads of 128: a contiguous row of 262144 tokens is 2**31 elements
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "vocab_size": 256, "hidden_size": 8192, "num_hidden_layers": 1,
        "num_attention_heads": 64, "num_key_value_heads": 64, "intermediate_size": 64,
        "max_position_embeddings": 1 << 19}))
    kw = dict(model=str(tmp_path), device="cuda", dtype="bfloat16", backend="cupy", max_seq_len=1 << 18)
    with pytest.raises(ValueError, match="32-bit offsets: 262144 tokens x 64 KV heads x head_dim 128"):
        tuner.EngineConfig(kv_cache="contiguous", **kw)
    assert tuner.EngineConfig(kv_cache="paged", block_size=128, **kw).backend == "cupy"  # paged rows are blocks
    assert tuner.EngineConfig(kv_cache="contiguous", **{**kw, "backend": "torch"}).backend == "torch"
