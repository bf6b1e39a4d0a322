"""Live telemetry while a run goes, what jupyterlab-nvdashboard shows, sampled off the main thread.

- On a GPU, through NVML (`pip install nvidia-ml-py`): utilisation, memory used, memory-bandwidth utilisation
  (the share of time the memory was being read or written) and power.
- On a CPU, through psutil: CPU utilisation of the whole machine and of this process, and resident memory.

`Telemetry` samples every `interval_s` on a daemon thread from start() to stop(); `latest` is the newest
sample (the panel shows it), `record()` what the run record keeps.
"""

from __future__ import annotations

import threading
import time

import psutil

INTERVAL_S = 0.3  # the panel's redraw rate: one sample per redraw


class Telemetry:
    def __init__(self, device: str = "cpu", interval_s: float = INTERVAL_S):
        self.device, self.interval_s = str(device), interval_s
        self.samples: list[dict] = []
        self.source, self.note = "psutil", None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._gpu = None
        if self.device.startswith("cuda"):
            self._gpu = _nvml_handle(self.device)
            if self._gpu is None:
                self.note = "GPU telemetry needs NVML: pip install nvidia-ml-py"
            else:
                self.source = "nvml"
        self._me = psutil.Process()

    @property
    def latest(self) -> dict | None:
        return self.samples[-1] if self.samples else None

    def start(self) -> Telemetry:
        self._t0 = time.perf_counter()
        psutil.cpu_percent(None)  # the first call only starts the interval the next one measures
        self._me.cpu_percent(None)
        self._thread = threading.Thread(target=self._run, name="tuner-telemetry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.samples:  # a run shorter than one interval still gets one sample
            self._sample()
        return self.record()

    def record(self) -> dict:
        out = {"source": self.source, "interval_s": self.interval_s, "samples": self.samples}
        if self.note:
            out["note"] = self.note
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _sample(self) -> None:
        s = {"t_s": round(time.perf_counter() - self._t0, 3), "cpu_pct": psutil.cpu_percent(None),
             "process_cpu_pct": self._me.cpu_percent(None), "rss_bytes": self._me.memory_info().rss}
        if self._gpu is not None:
            s.update(_nvml_sample(self._gpu))
        self.samples.append(s)

    def __enter__(self) -> Telemetry:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _nvml_handle(device: str):
    """NVML's handle of the GPU behind `device` (cuda, cuda:N), or None without nvidia-ml-py or a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        index = int(device.split(":")[1]) if ":" in device else 0
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:  # noqa: BLE001 - no NVML here: the run goes on, and the record says so
        return None


def _nvml_sample(handle) -> dict:
    import pynvml

    util = pynvml.nvmlDeviceGetUtilizationRates(handle)
    mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
    return {"gpu_util_pct": util.gpu, "gpu_mem_bw_util_pct": util.memory, "gpu_mem_used_bytes": mem.used,
            "gpu_mem_total_bytes": mem.total, "gpu_power_w": pynvml.nvmlDeviceGetPowerUsage(handle) / 1e3}


def line(sample: dict | None) -> str:
    """One sample as the panel shows it: 'CPU 87% (this process 180%), RSS 412 MiB' or 'GPU 95%, memory 12.1 GiB
    of 80 GiB, bandwidth 78%, 310 W'."""
    from .. import fmt

    if not sample:
        return ""
    if "gpu_util_pct" in sample:
        return (f"GPU {sample['gpu_util_pct']:.0f}%, memory {fmt.size(sample['gpu_mem_used_bytes'])} of "
                f"{fmt.size(sample['gpu_mem_total_bytes'])}, bandwidth {sample['gpu_mem_bw_util_pct']:.0f}%, "
                f"{sample['gpu_power_w']:.0f} W")
    return (f"CPU {sample['cpu_pct']:.0f}% (this process {sample['process_cpu_pct']:.0f}%), "
            f"RSS {fmt.size(sample['rss_bytes'])}")
