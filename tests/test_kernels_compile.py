"""Every CUDA kernel compiles through NVRTC for sm_80 and sm_90 with the run-time options, without spills.

NVRTC needs no GPU (pip nvidia-cuda-nvrtc-cu12); the ptxas report (registers, spills) is recorded in
benchmarks/results/kernels_ptxas.json-style output on stdout with -s.
"""

from __future__ import annotations

import ctypes
import glob
import os
import re

import pytest

from tuner.backends import cupy_ops

ARCHS = ("sm_80", "sm_90")


def _libnvrtc():
    import nvidia.cuda_nvrtc

    root = list(nvidia.cuda_nvrtc.__path__)[0]
    path = sorted(glob.glob(os.path.join(root, "lib", "libnvrtc.so*")))[0]
    lib = ctypes.CDLL(path)
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


def compile_nvrtc(src: str, name: str, options: list[str]) -> tuple[bool, str, int]:
    """(ok, log, cubin bytes) for one translation unit."""
    lib = _libnvrtc()
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), name.encode(), 0, None, None) == 0
    opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    rc = lib.nvrtcCompileProgram(prog, len(options), opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    buf = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, buf)
    cubin = ctypes.c_size_t(0)
    if rc == 0:
        lib.nvrtcGetCUBINSize(prog, ctypes.byref(cubin))
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc == 0, buf.value.decode(errors="replace"), cubin.value


def ptxas_report(log: str) -> dict[str, dict]:
    """Per kernel: registers, spill stores/loads and stack frame bytes, from the -v report."""
    out, current = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            current = out.setdefault(m.group(1), {})
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current is not None:
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m and current is not None:
            current["registers"] = int(m.group(1))
    return out


def _id(v):
    file, defines = v
    return file[:-3] + "-" + "-".join(f"{k}{val}" for k, val in sorted(defines.items()))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", cupy_ops.variants(), ids=_id)
def test_kernel_compiles_without_spills(variant, arch):
    file, defines = variant
    src = cupy_ops.source(file, **defines)
    ok, log, cubin = compile_nvrtc(src, file, [*cupy_ops.NVRTC_OPTIONS, f"-arch={arch}", "--ptxas-options=-v"])
    assert ok, log
    assert cubin > 1000
    report = ptxas_report(log)
    expected = set(re.findall(r'extern "C" __global__ void (?:__launch_bounds__\([^)]*\) )?(\w+)\(', src))
    assert expected and set(report) == expected, log
    for kernel, r in report.items():
        print(f"{arch} {_id(variant)} {kernel}: {r}")
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{kernel} spills: {r}"
        assert r["stack"] == 0, f"{kernel} uses a stack frame (local memory): {r}"
        assert 0 < r["registers"] <= 255
        if kernel == "decode_attention":  # the plan fills MIN_BLOCKS blocks of 128 threads per SM
            assert r["registers"] * 128 * defines["MIN_BLOCKS"] <= 65536, r


def test_variants_cover_every_kernel_file():
    files = {f for f, _ in cupy_ops.variants()}
    on_disk = {os.path.basename(p) for p in glob.glob(str(cupy_ops.kernel_dir() / "*.cu"))}
    assert files == on_disk == {"norm.cu", "rope_kv.cu", "attention.cu", "gemv.cu", "sampling.cu"}


def test_a_compile_error_is_reported():
    ok, log, _ = compile_nvrtc("extern \"C\" __global__ void k() { undefined_thing(); }", "bad.cu",
                               ["-arch=sm_90"])
    assert not ok and "undefined_thing" in log
