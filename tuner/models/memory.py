"""Resident memory while weights load: freed heap memory handed back to the OS."""

from __future__ import annotations

import ctypes

_CHECK_ELEMENTS = 1 << 21  # elements checked at a time by all_finite


def all_finite(t) -> bool:
    """Whether a float tensor holds no NaN or infinity, checked a slice at a time: torch.isfinite on a whole
    embedding table makes temporaries of twice its size (180 MB for SmolLM2's), the peak of a load."""
    import torch

    flat = t.reshape(-1)
    return all(bool(torch.isfinite(flat[i:i + _CHECK_ELEMENTS]).all()) for i in range(0, flat.numel(), _CHECK_ELEMENTS))


def release_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it in per-thread arenas otherwise)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _load_libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _load_libc()
