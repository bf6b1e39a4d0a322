"""tuner's CPU kernels (kernels/cpu_gemv.c and cpu_decode.c, built with gcc on first use).

The int8 and int4 products equal the torch twins they replace (tuner.backends.torch_ops.int8_linear / int4_linear)
on every path of the source: the AVX-512 loops and their scalar tails, one pass and several passes of rows, with
and without bias. The cpu backend's fused decode ops equal their torch twins, and an engine on backend='cpu' gives
backend='torch''s tokens, paged, contiguous and solo."""

import os

import pytest
import torch
import torch.nn.functional as F

import tuner
from conftest import VOCAB
from tuner.backends import cpu_kernels, torch_ops
from tuner.models.quant import KERNEL_ROWS, Int4Linear, Int8Linear

gen = torch.Generator().manual_seed(0)


@pytest.fixture(scope="module", autouse=True)
def built():
    if cpu_kernels.library() is None:
        if os.environ.get("TUNER_CI"):  # CI has gcc: the kernels must build there
            raise AssertionError(f"the CPU kernels did not build: {cpu_kernels.why_not()}")
        pytest.skip(f"no CPU kernels here: {cpu_kernels.why_not()}")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("M", [1, 3, 8, 9, 17])  # 8 rows share a pass over the weight: 9 and 17 take 2 and 3
@pytest.mark.parametrize("K", [576, 73])  # 73: an odd input width (the kernel steps 2 inputs at a time)
def test_int8_gemv_equals_its_torch_twin(M, K):
    N = 40  # blocks of 16 rows: 2 full, then 8 rows and 8 of padding
    x = torch.randn(M, K, generator=gen)
    q = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=gen)
    scale = (torch.rand(N, generator=gen) * 0.02).bfloat16()
    bias = torch.randn(N, generator=gen)
    q16, s16 = cpu_kernels.pack_int8(q, scale)
    back = cpu_kernels.unpack_int8(q16, s16, N)
    assert q16.shape == (3, K, 16) and back[0].equal(q) and back[1].equal(scale)
    for b in (None, bias):
        assert _rel(cpu_kernels.int8_gemv(x, q16, s16, b, N), torch_ops.int8_linear(x, q, scale, b)) < 1e-5
    # a prefill's weight, dequantized from the kernel's layout: the formula's bits
    assert torch.equal(cpu_kernels.int8_dequant(q16, s16, N), q.float() * scale.float()[:, None])


@pytest.mark.parametrize("M", [1, 9])
@pytest.mark.parametrize("G", [32, 64, 128, 8])  # 32-128: the AVX-512 path (odd and even group counts); 8: scalar
def test_int4_gemv_equals_its_torch_twin(M, G):
    N, K = 24, 384
    x = torch.randn(M, K, generator=gen)
    packed = torch.randint(0, 256, (N, K // 2), dtype=torch.uint8, generator=gen)
    scale = (torch.rand(N, K // G, generator=gen) * 0.02).bfloat16()
    zero = (torch.randn(N, K // G, generator=gen) * 0.02).bfloat16()
    bias = torch.randn(N, generator=gen)
    p16, s16, z16 = cpu_kernels.pack_int4(packed, scale, zero)  # 24 rows: a block of 16, then 8 and 8 zero rows
    back = cpu_kernels.unpack_int4(p16, s16, z16, N)
    assert back[0].equal(packed) and back[1].equal(scale) and back[2].equal(zero)
    for b in (None, bias):
        got = cpu_kernels.int4_gemv(x, p16, s16, z16, b, G, N)
        assert _rel(got, torch_ops.int4_linear(x, packed, scale, zero, b, G)) < 1e-5
    q = torch.stack([packed & 15, packed >> 4], dim=-1).view(N, K // G, G).float()
    want = ((q - 8.0) * scale.float()[..., None] + zero.float()[..., None]).view(N, K)
    assert torch.equal(cpu_kernels.int4_dequant(p16, s16, z16, G, N), want)


def test_the_kernels_refuse_tensors_they_cannot_read():
    q = torch.zeros(1, 32, 16, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"scale must be a contiguous CPU torch.bfloat16 tensor of shape \(16,\), "
                                         r"got cpu torch.float32 \(16,\)"):
        cpu_kernels.int8_gemv(torch.zeros(1, 32), q, torch.zeros(16), None, 8)
    with pytest.raises(ValueError, match=r"x must be .* \(2, 32\), got cpu torch.float32 \(2, 32\) \(strided\)"):
        cpu_kernels.int8_gemv(torch.zeros(32, 2).t(), q, torch.zeros(16).bfloat16(), None, 8)
    with pytest.raises(ValueError, match="group_size=12 must be even and divide K=32"):
        cpu_kernels.int4_gemv(torch.zeros(1, 32), torch.zeros(1, 16, 16, dtype=torch.uint8), torch.zeros(1, 2, 16),
                              torch.zeros(1, 2, 16), None, 12, 8)
    with pytest.raises(ValueError, match="packed holds 1 blocks of 16 rows, not the 2 of N=20"):
        cpu_kernels.int4_gemv(torch.zeros(1, 32), torch.zeros(1, 16, 16, dtype=torch.uint8), torch.zeros(1, 2, 16),
                              torch.zeros(1, 2, 16), None, 16, 20)


def test_quantized_layers_on_the_kernels_equal_their_dequantized_weights():
    w = torch.randn(40, 128, generator=gen)  # 40 rows: torch's int4 kernel cannot take them, tuner's does
    x = torch.randn(2, 1, 128, generator=gen)
    l4 = Int4Linear(w, None, 32)
    assert l4.native and not l4.packed_cpu
    assert _rel(l4(x), x @ l4.dequantize().t()) < 1e-5  # float32 activations: no bf16 rounding of x
    l8 = Int8Linear(w, native=True)
    assert _rel(l8(x), x @ l8.dequantize().t()) < 1e-5
    x20 = torch.randn(20, 128, generator=gen)  # a short prefill: the kernel, in passes of 8 rows
    assert _rel(l8(x20), x20 @ l8.dequantize().t()) < 1e-5
    for lin in (l8, l4):  # a longer one: the weight dequantized in C, then torch's product
        xl = torch.randn(KERNEL_ROWS[lin.scheme] + 1, 128, generator=gen)
        assert torch.equal(lin(xl), F.linear(xl, lin.dequantize()))
    tokens = torch.tensor([0, 17, 39])
    q, scale = l8.rows(tokens)  # the embedding's rows of a tied table, from the interleaved layout
    assert torch.equal(q.float() * scale.float()[:, None], l8.dequantize()[tokens])
    torch_l8 = Int8Linear(w, native=False)  # torch's kernel (bf16 activations) on the [N, K] layout
    assert torch.equal(torch_l8.dequantize(), l8.dequantize())
    assert 1e-5 < _rel(torch_l8(x20), x20 @ l8.dequantize().t()) < 0.02


def test_the_library_is_built_once_per_source_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_CACHE", str(tmp_path))
    first = cpu_kernels.build()
    assert first.parent == tmp_path / "cpu" and first.stat().st_size > 1000
    mtime = first.stat().st_mtime_ns
    assert cpu_kernels.build() == first and first.stat().st_mtime_ns == mtime  # not rebuilt


# -- backend='cpu': the fused decode ops against their torch twins, and the engine against backend='torch' --------


def _cache(paged: bool, B: int, kv_dtype: str = "auto"):
    from tuner.engine.kv_cache import KVCache, PagedKVCache

    a = _args()
    return PagedKVCache(a, B, 64, torch.float32, kv_dtype, torch.device("cpu"), 8) if paged else \
        KVCache(a, B, 64, torch.float32, kv_dtype, torch.device("cpu"))


def _args():
    import dataclasses

    from tuner.models.args import resolve_model

    return dataclasses.replace(resolve_model("tiny")[0], n_layers=2, n_heads=6, n_kv_heads=2, head_dim=16)


def test_add_rms_norm_and_silu_mul_equal_their_twins():
    from tuner.backends import cpu_ops

    x, d, w = torch.randn(3, 96, generator=gen), torch.randn(3, 96, generator=gen), torch.randn(96, generator=gen)
    for delta in (None, d):
        got_x, got_h = cpu_ops.add_rms_norm(x.clone(), delta, w, 1e-5)
        ref_x, ref_h = torch_ops.add_rms_norm(x.clone(), delta, w, 1e-5)
        assert torch.equal(got_x, ref_x) and _rel(got_h, ref_h) < 1e-6
    gu = torch.randn(3, 2 * 40, generator=gen)
    assert _rel(cpu_ops.silu_and_mul(gu), torch_ops.silu_and_mul(gu)) < 1e-6


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True])  # True: Qwen3's per-head q/k RMSNorm
def test_rope_kv_write_equals_its_twin_in_q_and_in_the_cache(paged, qk_norm):
    from tuner.backends import cpu_ops
    from tuner.models.model import rope_tables

    a = _args()
    B, H, Hkv, D = 3, a.n_heads, a.n_kv_heads, a.head_dim
    c1, c2 = _cache(paged, B), _cache(paged, B)
    for c in (c1, c2):
        c.reserve([40, 9, 23])
    cos, sin = rope_tables(a, 64, "cpu", torch.float32)
    qkv = torch.randn(B, (H + 2 * Hkv) * D + 8, generator=gen)[:, 8:]  # strided rows, as a slice of a wider output
    norm = torch.randn(H + Hkv, D, generator=gen) if qk_norm else None
    pos = torch.tensor([39, 8, 22], dtype=torch.int32)
    got = cpu_ops.rope_kv_write(qkv, norm, 1e-6, pos, cos, sin, c1, 1, c1.decode_tables(B), c1.block_len, H, Hkv)
    ref = torch_ops.rope_kv_write(qkv, norm, 1e-6, pos, cos, sin, c2, 1, c2.decode_tables(B), c2.block_len, H, Hkv)
    assert _rel(got, ref) < 1e-5
    assert _rel(c1.k, c2.k) < 1e-5 and torch.equal(c1.v, c2.v) and c1.k[0].abs().sum() == 0  # layer 1 only


@pytest.mark.parametrize("paged", [False, True])
def test_decode_attention_equals_its_twin_and_gives_zeros_without_keys(paged):
    from test_fixed_decode import _filled_cache  # the twin tests' cache of random K/V rows

    from tuner.backends import cpu_ops

    lens = [33, 5, 0, 17]
    c, _, q = _filled_cache(paged, lens, seed=3)
    tables, seq_lens = c.decode_tables(len(lens)), torch.tensor(lens, dtype=torch.int32)
    got = cpu_ops.decode_attention(q, c, 0, tables, c.block_len, seq_lens)
    ref = torch_ops.decode_attention(q, c, 0, tables, c.block_len, seq_lens)
    assert _rel(got, ref) < 1e-5 and got[2].abs().sum() == 0
    # a batch runs a KV head's query heads in one task, one sequence alone runs them apart: the same bits
    for b in range(len(lens)):
        solo = cpu_ops.decode_attention(q[b:b + 1], c, 0, tables[b:b + 1], c.block_len, seq_lens[b:b + 1])
        assert torch.equal(solo[0], got[b])


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("quant", ["none", "int8", "int4"])
def test_the_cpu_backend_gives_the_torch_backends_tokens_paged_contiguous_and_solo(checkpoint, family, quant):
    path, _ = checkpoint(family)
    g = torch.Generator().manual_seed(4)
    ps = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (3, 17, 9)]
    sampling = tuner.SamplingParams(max_new_tokens=12)
    knobs = dict(model=str(path), batch_size=3, quant=quant, group_size=32)
    cpu = tuner.Engine(**knobs, backend="cpu", kv_cache="contiguous")
    # the torch backend on the same weights (the cpu backend stores each layer in its kernels' form, where
    # float32 activations meet int4 weights; torch's own int4 kernel would round them to bf16)
    ref = cpu.replace(backend="torch").generate(ps, sampling).tokens
    assert cpu.generate(ps, sampling).tokens == ref
    assert cpu.replace(kv_cache="paged", block_size=8).generate(ps, sampling).tokens == ref
    solo = cpu.replace(batch_size=1)
    assert [solo.generate([p], sampling).tokens[0] for p in ps] == ref


@pytest.mark.parametrize("family", ["llama_bias", "qwen2", "qwen3"])  # biases everywhere; q/k/v bias, MQA; q/k norm
@pytest.mark.parametrize("quant", ["none", "int8", "int4"])
@pytest.mark.parametrize("paged", [False, True])
def test_the_one_call_c_step_equals_the_ops_one_by_one(checkpoint, family, quant, paged):
    """cpu_ops.decode_layers (all layers in one C call) against model._decode_layers (the same kernels called op by
    op): the residual, the final norm and every layer's cache entries."""
    from tuner.backends import cpu_ops
    from tuner.models.model import DecodeState

    path, _ = checkpoint(family)
    e = tuner.Engine(model=str(path), batch_size=3, quant=quant, group_size=32, backend="cpu",
                     kv_cache="paged" if paged else "contiguous", block_size=8, max_seq_len=64)
    m, a = e.model, e.model.args
    g = torch.Generator().manual_seed(9)
    cache = e.cache
    cache.k.normal_(generator=g), cache.v.normal_(generator=g)  # keys already cached before this step
    lens = torch.tensor([5, 17, 1], dtype=torch.int32)
    if paged:
        tables = torch.tensor([[3, 0, 0], [1, 4, 6], [2, 0, 0]], dtype=torch.int32)
        Y = 8
    else:
        tables, Y = torch.arange(3, dtype=torch.int32)[:, None], cache.k.shape[3]
    st = DecodeState(torch.tensor([7, 1, 30]), lens - 1, lens, tables, Y, e.cos, e.sin)
    x = m.embed(st.tokens)
    k0, v0 = cache.k.clone(), cache.v.clone()
    ref_x = x.clone()
    ref_h = m._decode_layers(ref_x, st, cache, cpu_ops)
    ref_k, ref_v = cache.k.clone(), cache.v.clone()
    cache.k.copy_(k0), cache.v.copy_(v0)
    got_x = x.clone()
    got_h = cpu_ops.decode_layers(m.layers, m.norm, a.norm_eps, st, cache, got_x, a.n_heads, a.n_kv_heads)
    assert got_h is not None  # every layer of a cpu-backend model runs in the C step
    assert torch.equal(got_x, ref_x) and torch.equal(got_h, ref_h)
    assert torch.equal(cache.k, ref_k) and torch.equal(cache.v, ref_v)
    assert not torch.equal(ref_k, k0)  # the step wrote its keys
    with pytest.raises(ValueError, match=r"layer 0: linear shapes .* do not fit heads 5/2"):
        cpu_ops.decode_layers(m.layers, m.norm, a.norm_eps, st, cache, got_x, 5, 2)


def test_the_cpu_backend_explains_what_it_cannot_run():
    for knobs, message in (({"device": "cuda"}, "backend='cpu' runs tuner's C kernels on device='cpu'"),
                           ({"dtype": "bfloat16"}, "backend='cpu' runs float32 models with kv_dtype='auto', not "
                                                   "dtype='bfloat16'"),
                           ({"kv_dtype": "int8"}, "kv_dtype='int8': use those, or backend='torch'")):
        with pytest.raises(ValueError, match=message):
            tuner.EngineConfig(model="tiny", backend="cpu", **knobs)


def test_a_profiled_cpu_backend_run_names_its_fused_ops(checkpoint):
    path, _ = checkpoint("llama")
    r = tuner.Engine(model=str(path), backend="cpu").generate(tuner.Workload(batch=1, prompt_len=8, output_len=6),
                                                              profile=True)
    decode = set(r.ops[r.ops.phase == "decode"].op)
    assert {"add_norm", "rope_kv_write", "attention", "act_mul", "qkv_proj", "lm_head"} <= decode
    assert "kv_write" not in decode  # fused into rope_kv_write


def test_the_cpu_backend_under_continuous_batching_gives_the_torch_backends_tokens(checkpoint):
    path, _ = checkpoint("llama")
    g = torch.Generator().manual_seed(6)
    ps = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (5, 21, 3, 12, 8)]
    sampling = tuner.SamplingParams(max_new_tokens=10)
    # 5 requests through 2 rows: later ones join running sequences, prefilling beside their decodes (mixed steps)
    knobs = dict(model=str(path), batch_size=2, kv_cache="paged", block_size=8, enable_chunked_prefill=True,
                 max_num_batched_tokens=16)
    ref = tuner.Engine(**knobs).generate(ps, sampling).tokens
    assert tuner.Engine(**knobs, backend="cpu").generate(ps, sampling).tokens == ref


@pytest.mark.parametrize("M", [1, 2, 3, 5, 8, 13])
def test_f32_gemv_equals_f_linear_and_serves_the_tied_head_of_a_batch(M):
    from tuner.models.quant import TiedLMHead

    # 203 rows: tasks of 4 and 3 single rows; M: tiles of 4 rows of x and every remainder
    w, x = torch.randn(203, 72, generator=gen), torch.randn(M, 72, generator=gen)
    bias = torch.randn(203, generator=gen)
    y = cpu_kernels.f32_gemv(x, w)
    assert _rel(y, torch.nn.functional.linear(x, w)) < 1e-5  # 72: AVX-512 steps, a tail
    assert _rel(cpu_kernels.f32_gemv(x, w, bias), torch.nn.functional.linear(x, w, bias)) < 1e-5
    for i in range(M):  # a row's result is the same bits whatever batch it is computed in
        assert torch.equal(cpu_kernels.f32_gemv(x[i:i + 1], w)[0], y[i])
    head = TiedLMHead(w)
    head.wide = True  # whichever this CPU timed faster, the kernel's path gives F.linear's logits
    assert _rel(head(x[:, None]), torch.nn.functional.linear(x, w)[:, None]) < 1e-5


def test_backend_auto_takes_the_c_kernels_on_a_cpu_where_they_run_and_torch_elsewhere():
    e = tuner.Engine(model="tiny", max_seq_len=64)
    assert tuner.EngineConfig().backend == "auto" and e.asked.backend == "auto"
    assert e.config.backend == "cpu" and e.ops.__name__ == "tuner.backends.cpu_ops"  # gcc builds them here
    int8_kv = e.replace(kv_dtype="int8")  # the cpu kernels keep a float32 cache: auto is resolved again
    assert int8_kv.config.backend == "torch" and int8_kv.model is e.model
    assert int8_kv.replace(kv_dtype="auto").config.backend == "cpu"
    assert tuner.Engine(model="tiny", max_seq_len=64, dtype="bfloat16").config.backend == "torch"
    r = e.generate(tuner.Workload(batch=1, prompt_len=4, output_len=3))
    assert r.config["backend"] == "cpu"  # a run records the backend it ran on
    with pytest.raises(ValueError, match="backend='cpu' runs float32 models with kv_dtype='auto'"):
        e.config.replace(kv_dtype="int8")  # asked for by name, cpu is still checked
