"""tuner's CPU kernels (kernels/cpu_gemv.c, built with gcc on first use): the int8 and int4 products equal the torch
twins they replace (tuner.backends.torch_ops.int8_linear / int4_linear) on every path of the source: the AVX-512
loops and their scalar tails, one pass and several passes of rows, with and without bias."""

import os

import pytest
import torch

from tuner.backends import cpu_kernels, torch_ops
from tuner.models.quant import Int4Linear, Int8Linear

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
@pytest.mark.parametrize("K", [576, 72])  # 72: 2 AVX-512 steps of 32, then a scalar tail of 8
def test_int8_gemv_equals_its_torch_twin(M, K):
    N = 40
    x = torch.randn(M, K, generator=gen)
    q = torch.randint(-127, 128, (N, K), dtype=torch.int8, generator=gen)
    scale = (torch.rand(N, generator=gen) * 0.02).bfloat16()
    bias = torch.randn(N, generator=gen)
    for b in (None, bias):
        assert _rel(cpu_kernels.int8_gemv(x, q, scale, b), torch_ops.int8_linear(x, q, scale, b)) < 1e-5


@pytest.mark.parametrize("M", [1, 9])
@pytest.mark.parametrize("G", [32, 64, 128, 8])  # 32-128: the AVX-512 path (odd and even group counts); 8: scalar
def test_int4_gemv_equals_its_torch_twin(M, G):
    N, K = 24, 384
    x = torch.randn(M, K, generator=gen)
    packed = torch.randint(0, 256, (N, K // 2), dtype=torch.uint8, generator=gen)
    scale = (torch.rand(N, K // G, generator=gen) * 0.02).bfloat16()
    zero = (torch.randn(N, K // G, generator=gen) * 0.02).bfloat16()
    bias = torch.randn(N, generator=gen)
    for b in (None, bias):
        got = cpu_kernels.int4_gemv(x, packed, scale, zero, b, G)
        assert _rel(got, torch_ops.int4_linear(x, packed, scale, zero, b, G)) < 1e-5


def test_the_kernels_refuse_tensors_they_cannot_read():
    q = torch.zeros(8, 32, dtype=torch.int8)
    with pytest.raises(ValueError, match=r"scale must be a contiguous CPU torch.bfloat16 tensor of shape \(8,\), "
                                         r"got cpu torch.float32 \(8,\)"):
        cpu_kernels.int8_gemv(torch.zeros(1, 32), q, torch.zeros(8), None)
    with pytest.raises(ValueError, match=r"x must be .* \(2, 32\), got cpu torch.float32 \(2, 32\) \(strided\)"):
        cpu_kernels.int8_gemv(torch.zeros(32, 2).t(), q, torch.zeros(8).bfloat16(), None)
    with pytest.raises(ValueError, match="group_size=12 must be even and divide K=32"):
        cpu_kernels.int4_gemv(torch.zeros(1, 32), torch.zeros(8, 16, dtype=torch.uint8), torch.zeros(8, 2),
                              torch.zeros(8, 2), None, 12)


def test_quantized_layers_on_the_kernels_equal_their_dequantized_weights():
    w = torch.randn(40, 128, generator=gen)  # 40 rows: torch's int4 kernel cannot take them, tuner's does
    x = torch.randn(2, 1, 128, generator=gen)
    l4 = Int4Linear(w, None, 32)
    assert l4.native and not l4.packed_cpu
    assert _rel(l4(x), x @ l4.dequantize().t()) < 1e-5  # float32 activations: no bf16 rounding of x
    l8 = Int8Linear(w)
    l8.native = True  # the same stored layout serves both kernels
    assert _rel(l8(x), x @ l8.dequantize().t()) < 1e-5
    x20 = torch.randn(20, 128, generator=gen)  # more rows than a decode step: torch's kernel (bf16 activations)
    assert 1e-5 < _rel(l8(x20), x20 @ l8.dequantize().t()) < 0.02


def test_the_library_is_built_once_per_source_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_CACHE", str(tmp_path))
    first = cpu_kernels.build()
    assert first.parent == tmp_path / "cpu" and first.stat().st_size > 1000
    mtime = first.stat().st_mtime_ns
    assert cpu_kernels.build() == first and first.stat().st_mtime_ns == mtime  # not rebuilt
