"""This device's name and its measured ceilings: copy bandwidth and matmul FLOP/s, cached per device."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch


def cache_dir() -> Path:
    """Where tuner keeps per-machine data: $TUNER_CACHE_DIR, else $XDG_CACHE_HOME/tuner or ~/.cache/tuner."""
    if os.environ.get("TUNER_CACHE_DIR"):
        return Path(os.environ["TUNER_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tuner"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time_s(fn, device: torch.device, repeats: int) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def measure_bandwidth_gbs(device: torch.device, nbytes: int = 256 << 20, repeats: int = 7) -> float:
    """Best device-memory copy rate, bytes read plus written per second / 1e9 (buffers far beyond any cache)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return 2 * nbytes / _best_time_s(lambda: dst.copy_(src), device, repeats) / 1e9


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """Best dense matmul rate in TFLOP/s for `dtype` (n=2048 on CPU, 8192 on GPU)."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return 2 * n**3 / _best_time_s(lambda: a @ b, device, repeats) / 1e12


def hardware_info(device: torch.device, dtype: torch.dtype) -> dict:
    """Name and measured ceilings of `device`; measured once per machine and cached on disk."""
    name = device_name(device)
    threads = torch.get_num_threads() if device.type == "cpu" else None
    key = f"{device.type}|{name}|threads={threads}"
    path = cache_dir() / "hardware.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    entry = cached.setdefault(key, {})
    dtype_name = str(dtype).removeprefix("torch.")
    changed = False
    if "bandwidth_gbs" not in entry:
        entry["bandwidth_gbs"] = round(measure_bandwidth_gbs(device), 2)
        changed = True
    if dtype_name not in entry.setdefault("matmul_tflops", {}):
        entry["matmul_tflops"][dtype_name] = round(measure_matmul_tflops(device, dtype), 4)
        changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cached, indent=1))
        tmp.replace(path)
    info = {"device": device.type, "name": name, "bandwidth_gbs": entry["bandwidth_gbs"],
            "matmul_tflops": entry["matmul_tflops"][dtype_name], "dtype": dtype_name}
    if threads is not None:
        info["threads"] = threads
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(sm_count=props.multi_processor_count, memory_bytes=props.total_memory)
    return info
