"""The device: its name and facts, datasheet peaks for common GPUs, and its measured ceilings.

`calibrate()` measures memory bandwidth (the better of a copy and a read-only reduction) and dense matmul
FLOP/s per dtype on this device, CPU or GPU, and caches them per device in cache_dir()/hardware.json. The roofline
uses the measured figures; the datasheet ones are shown beside them.
"""

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


def check_device(device: str | torch.device) -> None:
    """ValueError unless this machine has `device` (CUDA present, the index in range)."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available here (torch {torch.__version__}): "
                         "use device='cpu'")
    if (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device={str(device)!r} but only {torch.cuda.device_count()} CUDA device(s) exist")


def has_fp8(device: str | torch.device) -> bool:
    """Whether `device` computes in fp8 (CUDA compute capability 8.9 or newer)."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def available_memory_bytes(device: str | torch.device) -> int | None:
    """Memory an engine could take now: free GPU memory, or on the host MemAvailable (less, under a cgroup
    limit, what the limit leaves). None where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        meminfo = Path("/proc/meminfo").read_text()
        free = next(int(line.split()[1]) * 1024 for line in meminfo.splitlines() if line.startswith("MemAvailable"))
    except (OSError, StopIteration, ValueError):
        return None
    try:  # cgroup v2: a container's own limit
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            free = min(free, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return free


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


# Dense (non-sparse) datasheet peaks: TFLOP/s (int8: TOP/s) and memory bandwidth in GB/s. NVIDIA's
# product pages and architecture whitepapers; "fp32" is the CUDA-core rate (no TF32).
DATASHEET: dict[str, dict] = {
    "H100 SXM": {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9, "int8": 1978.9, "fp8": 1978.9,
                 "bandwidth_gbs": 3350},
    "H100 PCIe": {"bfloat16": 756.5, "float16": 756.5, "float32": 51.2, "int8": 1513.0, "fp8": 1513.0,
                  "bandwidth_gbs": 2000},
    "H200": {"bfloat16": 989.4, "float16": 989.4, "float32": 66.9, "int8": 1978.9, "fp8": 1978.9,
             "bandwidth_gbs": 4800},
    "A100 80GB": {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5, "int8": 624.0, "fp8": None,
                  "bandwidth_gbs": 2039},
    "A100 40GB": {"bfloat16": 312.0, "float16": 312.0, "float32": 19.5, "int8": 624.0, "fp8": None,
                  "bandwidth_gbs": 1555},
    "L4": {"bfloat16": 121.0, "float16": 121.0, "float32": 30.3, "int8": 242.5, "fp8": 242.5, "bandwidth_gbs": 300},
    "L40S": {"bfloat16": 362.1, "float16": 362.1, "float32": 91.6, "int8": 733.0, "fp8": 733.0, "bandwidth_gbs": 864},
    "A10G": {"bfloat16": 70.0, "float16": 70.0, "float32": 31.2, "int8": 140.0, "fp8": None, "bandwidth_gbs": 600},
    "RTX 4090": {"bfloat16": 165.2, "float16": 165.2, "float32": 82.6, "int8": 660.6, "fp8": 330.3,
                 "bandwidth_gbs": 1008},
}


def datasheet_key(name: str) -> str | None:
    """Which DATASHEET row a device name (as CUDA reports it) is, or None."""
    n = name.upper().replace("-", " ")
    if "H200" in n:
        return "H200"
    if "H100" in n:
        return "H100 PCIe" if "PCIE" in n else "H100 SXM"
    if "A100" in n:
        return "A100 40GB" if "40GB" in n.replace(" ", "") else "A100 80GB"
    if "L40S" in n:
        return "L40S"
    if "A10G" in n:
        return "A10G"
    if "4090" in n:
        return "RTX 4090"
    if n.split()[-1:] == ["L4"]:
        return "L4"
    return None


def datasheet(name: str) -> dict | None:
    key = datasheet_key(name)
    return None if key is None else {"model": key, **DATASHEET[key]}


def device_facts(device: torch.device) -> dict:
    """Name, cores and memory: CPU model, cores and threads; GPU name, SM count, memory, compute capability."""
    facts = {"device": device.type, "name": device_name(device)}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        facts.update(sm_count=p.multi_processor_count, memory_bytes=p.total_memory,
                     compute_capability=f"{p.major}.{p.minor}")
    else:
        facts.update(cores=os.cpu_count(), threads=torch.get_num_threads())
        try:
            kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
            facts["memory_bytes"] = kb * 1024
        except (OSError, StopIteration, ValueError):
            pass
    return facts


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


def measure_bandwidth_gbs(device: torch.device, nbytes: int | None = None, repeats: int = 7) -> float:
    """Device-memory bandwidth in GB/s: the better of a copy (bytes read plus written per second) and a
    read-only reduction, over buffers far beyond any cache. Decode mostly reads (weights, KV), and reads run
    faster than copies (this CPU: 51 against 44 GB/s; on an H200 cuBLAS GEMVs read at 105% of the copy
    rate), so a copy-only ceiling put read-bound ops above 100%."""
    nbytes = nbytes or (1 << 30 if device.type == "cuda" else 256 << 20)  # GPU: long enough for a host timer
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    copy = 2 * nbytes / _best_time_s(lambda: dst.copy_(src), device, repeats)
    read = nbytes / _best_time_s(lambda: src.sum(), device, repeats)
    return max(copy, read) / 1e9


def measure_matmul_tflops(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """Best dense matmul rate in TFLOP/s for `dtype` (n=2048 on CPU, 8192 on GPU). On CPU the best of
    torch's matmul and the oneDNN packed linear the engine itself uses."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = _best_time_s(lambda: a @ b, device, repeats)
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(b, n)
            best = min(best, _best_time_s(
                lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""), device, repeats))
        except (RuntimeError, AttributeError):
            pass
    return 2 * n**3 / best / 1e12


CALIBRATION = "v3"  # bump when the measurements change, so cached figures are measured again


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def calibrate(device: torch.device | str = "cpu", dtypes=(torch.float32,), force: bool = False,
              progress=None) -> dict:
    """This device's measured ceilings: memory bandwidth and dense matmul TFLOP/s for each of `dtypes`.

    Measured once per device (and CPU thread count), then read from cache_dir()/hardware.json;
    force=True measures again. Returns {device facts..., "bandwidth_gbs", "matmul_tflops": {dtype: x},
    "datasheet": {...} or None}.
    """
    device = torch.device(device)
    facts = device_facts(device)
    key = f"{device.type}|{facts['name']}|threads={facts.get('threads')}|{CALIBRATION}"
    path = cache_dir() / "hardware.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    entry = {} if force else cached.get(key, {})
    changed = force
    if "bandwidth_gbs" not in entry:
        if progress:
            progress("memory bandwidth")
        entry["bandwidth_gbs"] = round(measure_bandwidth_gbs(device), 2)
        changed = True
    for dtype in dtypes:
        name = _dtype_name(dtype)
        if name not in entry.setdefault("matmul_tflops", {}):
            if progress:
                progress(f"{name} matmul")
            entry["matmul_tflops"][name] = round(measure_matmul_tflops(device, dtype), 4)
            changed = True
    if changed:
        cached[key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cached, indent=1))
        tmp.replace(path)
    return {**facts, "bandwidth_gbs": entry["bandwidth_gbs"], "matmul_tflops": dict(entry["matmul_tflops"]),
            "datasheet": datasheet(facts["name"]) if device.type == "cuda" else None}


def hardware_info(device: torch.device, dtype: torch.dtype) -> dict:
    """What a run records: device facts and the measured ceilings for the run's dtype (see calibrate)."""
    cal = calibrate(device, (dtype,))
    name = _dtype_name(dtype)
    info = {k: v for k, v in cal.items() if k not in ("matmul_tflops", "datasheet")}
    info.update(matmul_tflops=cal["matmul_tflops"][name], dtype=name)
    sheet = cal["datasheet"]
    if sheet:
        info["datasheet"] = {"model": sheet["model"], "bandwidth_gbs": sheet["bandwidth_gbs"],
                             "matmul_tflops": sheet.get(name)}
    return info


def hw_table(device: torch.device | str = "cpu", dtypes=None, force: bool = False) -> str:
    """`tuner hw`: the device, and its datasheet and measured ceilings side by side, as text."""
    check_device(device)
    device = torch.device(device)
    if dtypes is None:
        dtypes = (torch.float32, torch.bfloat16, torch.float16) if device.type == "cuda" else (torch.float32,)
    cal = calibrate(device, dtypes, force=force)
    sheet = cal["datasheet"] or {}
    facts = [f"device     {cal['name']} ({device})"]
    if device.type == "cuda":
        facts.append(f"           {cal['sm_count']} SMs, {cal['memory_bytes'] / 2**30:.1f} GiB, "
                     f"compute capability {cal['compute_capability']}")
    else:
        mem = f", {cal['memory_bytes'] / 2**30:.1f} GiB" if "memory_bytes" in cal else ""
        facts.append(f"           {cal['cores']} cores, torch uses {cal['threads']} threads{mem}")
    rows = [("", "datasheet", "measured"),
            ("memory GB/s (best of copy, read)", _fmt(sheet.get("bandwidth_gbs")), f"{cal['bandwidth_gbs']:.1f}")]
    for name, tf in cal["matmul_tflops"].items():
        rows.append((f"{name} matmul TFLOP/s", _fmt(sheet.get(name)), f"{tf:.3g}"))
    if sheet:
        rows.append(("int8 TOP/s", _fmt(sheet.get("int8")), "-"))
        rows.append(("fp8 TFLOP/s", _fmt(sheet.get("fp8")), "-"))
    w = max(len(r[0]) for r in rows)
    lines = facts + ([f"datasheet  {sheet['model']} (dense peaks)"] if sheet else
                     ["datasheet  none for this device: the roofline uses the measured ceilings"])
    lines += [f"{a:<{w}}  {b:>10}  {c:>10}" for a, b, c in rows]
    lines.append(f"cached in {cache_dir() / 'hardware.json'} (tuner hw --force measures again)")
    return "\n".join(lines)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:g}"
