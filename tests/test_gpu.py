"""GPU tests (marked gpu, skipped without CUDA): every CuPy kernel against its torch twin on fresh random
inputs, outputs poisoned first; CUDA-graph capture and replay; cupy tokens equal torch tokens end to end.

Run by benchmarks/gpu_suite.py on a real GPU.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tuner
from conftest import VOCAB, save_checkpoint
from tuner.backends import torch_ops
from tuner.engine.kv_cache import KVCache, PagedKVCache
from tuner.models.args import resolve_model
from tuner.models.model import rope_tables
from tuner.models.quant import Int4Linear, Int8Linear

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
DEV = torch.device("cuda")


@pytest.fixture(autouse=True)
def fresh_seed(request):
    torch.manual_seed(hash(request.node.name) % (2**31))


def cupy_ops():
    from tuner.backends import cupy_ops as ops

    return ops


def poison():
    """Fill free blocks of torch's caching allocator with NaN, so an output element the kernel leaves
    unwritten fails the comparison."""
    for n in (1 << 16, 1 << 20, 1 << 24):
        torch.full((n,), float("nan"), device=DEV)
    torch.cuda.synchronize()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all(), "non-finite output (unwritten or NaN)"
    return ((out - ref).norm() / ref.norm()).item()


DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n", [(1, 896), (3, 4096), (8, 5120), (5, 2048)])
@pytest.mark.parametrize("with_delta", [False, True])
def test_add_rms_norm_matches_twin(dtype, rows, n, with_delta):
    x = torch.randn(rows, n, device=DEV).to(dtype)
    d = torch.randn(rows, n, device=DEV).to(dtype) if with_delta else None
    w = (torch.rand(n, device=DEV) + 0.5).to(dtype)
    x_ref, out_ref = torch_ops.add_rms_norm(x.clone(), d, w, 1e-6)
    poison()
    x_got, out = cupy_ops().add_rms_norm(x.clone(), d, w, 1e-6)
    assert rel_err(x_got, x_ref) < 1e-2
    assert rel_err(out, out_ref) < 2e-2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,n", [(1, 8192), (3, 14336), (8, 896)])
def test_silu_and_mul_matches_twin(dtype, rows, n):
    x = (torch.randn(rows, 2 * n, device=DEV) * 3).to(dtype)
    ref = torch_ops.silu_and_mul(x)
    poison()
    assert rel_err(cupy_ops().silu_and_mul(x), ref) < 1e-2


def _args(H, Hkv, D, layers=2):
    args, _ = resolve_model("tiny")
    return dataclasses.replace(args, n_layers=layers, n_heads=H, n_kv_heads=Hkv, head_dim=D)


def _cache(args, B, max_len, dtype, kv_dtype, paged, block_size=16):
    if paged:
        return PagedKVCache(args, B, max_len, dtype, kv_dtype, DEV, block_size)
    return KVCache(args, B, max_len, dtype, kv_dtype, DEV)


def _fill(cache, layer, lens):
    """Random K/V for every sequence's first lens[b] tokens (the cache reserves them first)."""
    cache.reserve(lens)
    Hkv, D = cache.k.shape[2], cache.k.shape[4]
    for b, n in enumerate(lens):
        k = torch.randn(n, Hkv, D, device=DEV).to(cache.dtype)
        v = torch.randn(n, Hkv, D, device=DEV).to(cache.dtype)
        cache.write(layer, k, v, cache.slots(torch.full((n,), b, device=DEV), torch.arange(n, device=DEV)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("kv_dtype", ["auto", "int8"])
@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_rope_kv_write_matches_twin(dtype, D, kv_dtype, paged, qk_norm):
    H, Hkv, B = 12, 4, 5
    args = _args(H, Hkv, D)
    cos, sin = rope_tables(args, 512, DEV, dtype)
    lens = torch.randint(1, 500, (B,)).tolist()
    caches = [_cache(args, B, 512, dtype, kv_dtype, paged) for _ in range(2)]
    for c in caches:
        c.reserve([n + 1 for n in lens])
    qkv = torch.randn(B, (H + 2 * Hkv) * D, device=DEV).to(dtype)
    norm = (torch.rand(H + Hkv, D, device=DEV) + 0.5).to(dtype) if qk_norm else None
    pos = torch.tensor(lens, device=DEV, dtype=torch.int32)
    ref_q = torch_ops.rope_kv_write(qkv, norm, 1e-6, pos, cos, sin, caches[0], 1, caches[0].decode_tables(B),
                                    caches[0].block_len, H, Hkv)
    poison()
    q = cupy_ops().rope_kv_write(qkv, norm, 1e-6, pos, cos, sin, caches[1], 1, caches[1].decode_tables(B),
                                 caches[1].block_len, H, Hkv)
    assert rel_err(q, ref_q) < 1e-2
    ref_k, ref_v = caches[0].read(1, B, max(lens) + 1)
    k, v = caches[1].read(1, B, max(lens) + 1)
    assert rel_err(k, ref_k) < 2e-2 and rel_err(v, ref_v) < 2e-2
    if kv_dtype == "int8":  # quantized values agree to one step
        assert (caches[0].k.float() - caches[1].k.float()).abs().max() <= 1
    assert caches[1].k[0].float().abs().sum() == 0  # other layers untouched


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H,Hkv,D", [(32, 8, 128), (14, 2, 64), (28, 4, 128), (8, 8, 64), (16, 2, 128)])
@pytest.mark.parametrize("kv_dtype", ["auto", "int8"])
@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("min_part", [32, 64])
def test_decode_attention_matches_twin(dtype, H, Hkv, D, kv_dtype, paged, min_part):
    B = int(torch.randint(1, 9, ()).item())
    lens = torch.randint(1, 3000, (B,)).tolist()
    args = _args(H, Hkv, D, layers=1)
    cache = _cache(args, B, 3072, dtype, kv_dtype, paged)
    _fill(cache, 0, lens)
    q = torch.randn(B, H, D, device=DEV).to(dtype)
    seq = torch.tensor(lens, device=DEV, dtype=torch.int32)
    tables = cache.decode_tables(B)
    ref = torch_ops.decode_attention(q, cache, 0, tables, cache.block_len, seq)
    ops = cupy_ops()
    for max_len in (max(lens), 3072):  # the eager plan and the CUDA-graph plan (whole cache, empty partitions)
        plan = ops.AttentionPlan(B, H, Hkv, D, max_len, DEV, min_part=min_part)
        poison()
        out = ops.decode_attention(q, cache, 0, tables, cache.block_len, seq, plan)
        assert rel_err(out, ref) < 2e-2, (max_len, plan.num_parts)


@pytest.mark.parametrize("G", range(1, 9))
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("kv_dtype", ["auto", "int8"])
def test_decode_attention_serves_every_query_group(G, D, kv_dtype):
    B, Hkv = 3, 2
    lens = [700, 1, 2100]
    cache = _cache(_args(G * Hkv, Hkv, D, layers=1), B, 2304, torch.bfloat16, kv_dtype, paged=True)
    _fill(cache, 0, lens)
    q = torch.randn(B, G * Hkv, D, device=DEV).to(torch.bfloat16)
    seq, tables = torch.tensor(lens, device=DEV, dtype=torch.int32), cache.decode_tables(B)
    ref = torch_ops.decode_attention(q, cache, 0, tables, cache.block_len, seq)
    poison()
    plan = cupy_ops().AttentionPlan(B, G * Hkv, Hkv, D, max(lens), DEV)
    assert rel_err(cupy_ops().decode_attention(q, cache, 0, tables, cache.block_len, seq, plan), ref) < 2e-2


@pytest.mark.parametrize("block_size", [8, 32, 64, 128])
@pytest.mark.parametrize("kv_dtype", ["auto", "int8"])
def test_decode_attention_reads_every_block_size(block_size, kv_dtype):
    B, H, Hkv, D = 4, 32, 8, 128
    lens = [block_size - 1, block_size, block_size + 1, 1500]
    cache = _cache(_args(H, Hkv, D, layers=1), B, 1536, torch.bfloat16, kv_dtype, paged=True, block_size=block_size)
    _fill(cache, 0, lens)
    q = torch.randn(B, H, D, device=DEV).to(torch.bfloat16)
    seq, tables = torch.tensor(lens, device=DEV, dtype=torch.int32), cache.decode_tables(B)
    ref = torch_ops.decode_attention(q, cache, 0, tables, cache.block_len, seq)
    poison()
    plan = cupy_ops().AttentionPlan(B, H, Hkv, D, max(lens), DEV)
    assert rel_err(cupy_ops().decode_attention(q, cache, 0, tables, cache.block_len, seq, plan), ref) < 2e-2


@pytest.mark.parametrize("max_len", [32, 3072])  # one partition, and many (the CUDA-graph plan's empty ones)
def test_decode_attention_gives_zeros_for_a_sequence_with_no_keys(max_len):
    B, H, Hkv, D = 4, 32, 8, 128
    lens = [0, 17, 0, 30]
    cache = _cache(_args(H, Hkv, D, layers=1), B, 3072, torch.bfloat16, "auto", paged=True)
    _fill(cache, 0, lens)
    q = torch.randn(B, H, D, device=DEV).to(torch.bfloat16)
    seq, tables = torch.tensor(lens, device=DEV, dtype=torch.int32), cache.decode_tables(B)
    plan = cupy_ops().AttentionPlan(B, H, Hkv, D, max_len, DEV)
    assert (plan.num_parts == 1) == (max_len == 32)
    poison()
    out = cupy_ops().decode_attention(q, cache, 0, tables, cache.block_len, seq, plan)
    assert torch.isfinite(out).all()
    assert out[0].abs().sum() == 0 and out[2].abs().sum() == 0
    ref = torch_ops.decode_attention(q, cache, 0, tables, cache.block_len, seq)
    assert rel_err(out[1::2], ref[1::2]) < 2e-2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 3, 8])
@pytest.mark.parametrize("N,K", [(1000, 2048), (4096, 1024), (256, 14336)])
@pytest.mark.parametrize("bias", [False, True])
def test_weight_only_gemv_matches_twin(dtype, M, N, K, bias):
    w = torch.randn(N, K, device=DEV).to(dtype)
    b = torch.randn(N, device=DEV).to(dtype) if bias else None
    x = torch.randn(M, K, device=DEV).to(dtype)
    ops = cupy_ops()
    l8 = Int8Linear(w, b)
    ref = torch_ops.int8_linear(x, l8.weight, l8.scale, b)
    poison()
    assert rel_err(ops.int8_linear(x, l8.weight, l8.scale, b), ref) < 1e-2
    l4 = Int4Linear(w, b, 128)
    ref = torch_ops.int4_linear(x, l4.weight, l4.scale, l4.zero, b, 128)
    poison()
    assert rel_err(ops.int4_linear(x, l4.weight, l4.scale, l4.zero, b, 128), ref) < 1e-2


@pytest.mark.parametrize("V", [32000, 128256, 1000])
@pytest.mark.parametrize("top_k,top_p,min_p", [(0, 1.0, 0.0), (50, 1.0, 0.0), (0, 0.9, 0.0), (40, 0.8, 0.05),
                                               (0, 1.0, 0.1), (0, 0.95, 0.0)])
def test_fused_sampling_matches_twin(V, top_k, top_p, min_p):
    B = 16
    logits = torch.randn(B, V, device=DEV) * 4
    params = tuner.SamplingParams(temperature=0.7, top_k=top_k, top_p=top_p, min_p=min_p)
    ref_rng = torch.tensor([11, 5, 0], device=DEV)
    ref = torch_ops.sample_fused(logits, params, ref_rng)
    rng = torch.tensor([11, 5, 0], device=DEV)
    got = cupy_ops().sample_fused(logits, params, rng)
    assert rng.tolist() == [11, 6, 0]  # the last block advanced the offset and reset its counter
    keep = torch_ops.fused_keep(logits, 0.7, top_k, top_p, min_p)
    assert keep.gather(1, got[:, None]).all()  # every draw is a kept token
    assert (got == ref).float().mean().item() >= 0.9  # same noise: the same tokens (bar float ties)
    greedy = cupy_ops().sample_fused(logits, tuner.SamplingParams(), rng)
    assert torch.equal(greedy, logits.argmax(dim=-1))


def _engine_checkpoint(tmp_path, family="llama"):
    # weights spread enough that greedy choices are not near-ties at half precision
    # and head_dim 64, which the kernels serve
    path = tmp_path / family
    dims = dict(hidden_size=256, intermediate_size=512) if family == "llama" else \
        dict(hidden_size=128, head_dim=64, intermediate_size=256)
    save_checkpoint(path, family, dtype=torch.float16, initializer_range=0.2, **dims)
    return str(path)


@pytest.mark.parametrize("kv_cache", ["contiguous", "paged"])
@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_cupy_backend_tokens_equal_torch_backend(tmp_path, family, kv_cache):
    path = _engine_checkpoint(tmp_path, family)
    g = torch.Generator().manual_seed(0)
    ps = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (5, 40, 17)]
    sp = tuner.SamplingParams(max_new_tokens=24)
    knobs = dict(model=path, device="cuda", dtype="float16", batch_size=3, kv_cache=kv_cache, block_size=16)
    ref = tuner.Engine(**knobs).generate(ps, sp)
    got = tuner.Engine(**knobs, backend="cupy").generate(ps, sp)
    assert got.tokens == ref.tokens


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("backend,kv_cache", [("cupy", "paged"), ("torch", "paged"), ("torch", "contiguous")])
def test_cuda_graph_replay_gives_the_eager_tokens(tmp_path, batch, backend, kv_cache):
    path = _engine_checkpoint(tmp_path)
    g = torch.Generator().manual_seed(1)
    ps = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (9, 30, 3)[:batch]]
    sp = tuner.SamplingParams(max_new_tokens=20)
    knobs = dict(model=path, device="cuda", dtype="float16", batch_size=batch, kv_cache=kv_cache, backend=backend)
    eager = tuner.Engine(**knobs).generate(ps, sp)
    e = tuner.Engine(**knobs, cuda_graphs=True)
    graphed = e.generate(ps, sp)
    assert graphed.tokens == eager.tokens
    # batch 3 replays the bucket of 4; contexts up to 50 tokens need only the 256-token band
    assert list(e.graphs.graphs) == [(1 if batch == 1 else 4, 256)]
    sampled = dict(temperature=0.8, top_p=0.9, max_new_tokens=16, seed=3)
    a = tuner.Engine(**knobs).generate(ps, tuner.SamplingParams(**sampled))
    b = e.generate(ps, tuner.SamplingParams(**sampled))
    assert a.tokens == b.tokens  # the sampler's device-side random state gives the same draws


def test_cuda_graphs_follow_the_context_across_bands(tmp_path):
    path = _engine_checkpoint(tmp_path)
    g = torch.Generator().manual_seed(2)
    ps = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (250, 20)]
    sp = tuner.SamplingParams(max_new_tokens=12)
    knobs = dict(model=path, device="cuda", dtype="float16", batch_size=2, kv_cache="paged", backend="cupy",
                 max_seq_len=1024)
    eager = tuner.Engine(**knobs).generate(ps, sp)
    e = tuner.Engine(**knobs, cuda_graphs=True)
    assert e.generate(ps, sp).tokens == eager.tokens
    assert sorted(e.graphs.graphs) == [(2, 256), (2, 512)]  # the 250-token prompt grows past 256


def test_nvtx_ranges_run_on_the_gpu_and_change_no_token(tmp_path):
    from tuner import ranges

    e = tuner.Engine(model=_engine_checkpoint(tmp_path), device="cuda", dtype="bfloat16")
    plain = e.generate([[1, 2, 3, 4]], tuner.SamplingParams(max_new_tokens=8))
    with ranges.nvtx():
        marked = e.generate([[1, 2, 3, 4]], tuner.SamplingParams(max_new_tokens=8))
    assert marked.tokens == plain.tokens


def test_gpu_telemetry_comes_from_nvml_with_values_in_range(tmp_path):
    pytest.importorskip("pynvml", reason="GPU telemetry reads NVML through nvidia-ml-py (tuner[gpu])")
    e = tuner.Engine(model=_engine_checkpoint(tmp_path), device="cuda", dtype="bfloat16", max_seq_len=2048)
    r = e.generate([[1, 2, 3, 4]], tuner.SamplingParams(max_new_tokens=1500, ignore_eos=True))
    tel = r.telemetry
    assert tel["source"] == "nvml" and tel["samples"]
    for s in tel["samples"]:
        assert 0 <= s["gpu_util_pct"] <= 100 and 0 <= s["gpu_mem_bw_util_pct"] <= 100
        assert 0 < s["gpu_mem_used_bytes"] <= s["gpu_mem_total_bytes"]
        assert 0 < s["gpu_power_w"] < 2000
