"""Named ranges around the engine's ops: torch.profiler ranges while a profile is taken, NVTX ranges of the same
names for Nsight Systems when asked (`nvtx()`, or TUNER_NVTX=1 in the environment), and free otherwise.

    TUNER_NVTX=1 nsys profile -t cuda,nvtx tuner run --device cuda ...

shows qkv_proj, attention, decode, ... on Nsight's NVTX row above their kernels.
"""

from __future__ import annotations

import contextlib
import os

import torch

_NULL = contextlib.nullcontext()
_on = False
_nvtx = os.environ.get("TUNER_NVTX", "") not in ("", "0")


try:  # a C++ range: ~0.6 us against ~5 us for torch.profiler.record_function (torch 2.13, this CPU)
    from torch._C._profiler import _RecordFunctionFast as _Range
except ImportError:  # older torch
    _Range = torch.profiler.record_function


class _Nvtx:
    """An NVTX range around an op (and its profiler range while a profile is taken)."""

    __slots__ = ("name", "inner")

    def __init__(self, name: str, inner):
        self.name, self.inner = name, inner

    def __enter__(self):
        torch.cuda.nvtx.range_push(self.name)
        self.inner.__enter__()

    def __exit__(self, *exc):
        try:
            self.inner.__exit__(*exc)
        finally:
            torch.cuda.nvtx.range_pop()


def op(name: str):
    """`with op("qkv_proj"):` marks an op for torch.profiler while a profile is taken (and for Nsight while NVTX
    ranges are on), and costs nothing else."""
    inner = _Range(name) if _on else _NULL
    return _Nvtx(name, inner) if _nvtx else inner


def ranges_on() -> bool:
    """Whether ops are being timed one by one now (a profile, or NVTX ranges): a backend that would fuse several
    named ops into one call runs them one by one instead."""
    return _on or _nvtx


@contextlib.contextmanager
def recording():
    """Turn the profiler ranges on for the duration of a profile."""
    global _on
    previous, _on = _on, True
    try:
        yield
    finally:
        _on = previous


@contextlib.contextmanager
def nvtx(enabled: bool = True):
    """NVTX ranges named as tuner's ops for the block, for Nsight Systems (they need a CUDA build of torch)."""
    global _nvtx
    if enabled and not torch.cuda.is_available():
        raise ValueError("NVTX ranges need CUDA (a CUDA build of torch and a GPU); Nsight has nothing to show here")
    previous, _nvtx = _nvtx, enabled
    try:
        yield
    finally:
        _nvtx = previous
