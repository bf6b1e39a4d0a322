"""Start TensorBoard (with the torch-tb-profiler plugin) on 127.0.0.1 over tuner's profiled runs."""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .capture import default_logdir

# torch-tb-profiler's pages draw with Google Charts, loaded from www.gstatic.com: offline its views spin forever
OFFLINE_NOTE = ("offline, the profiler plugin's views spin forever (they load Google Charts from a CDN); "
                "without a network open a run's trace.json.gz in chrome://tracing (built into Chrome and "
                "Chromium), or read its op table: tuner run --profile, or RunResult.ops_text()")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TensorBoard:
    """A running TensorBoard; stop() ends it (also on leaving a `with` block)."""

    def __init__(self, logdir: str | Path | None = None, port: int | None = None, timeout_s: float = 60.0):
        try:
            import tensorboard  # noqa: F401
            import torch_tb_profiler  # noqa: F401
        except ImportError as e:
            raise ImportError("TensorBoard's profiler view needs `pip install tensorboard torch-tb-profiler` "
                              "(or tuner[profile])") from e
        self.logdir = Path(logdir or default_logdir())
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        # its own process group (stop() ends the server and its helpers together), ended with this process:
        # on Linux the kernel signals it when its parent dies, and atexit stops it on every normal exit
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(self.logdir), "--host", "127.0.0.1",
             "--port", str(self.port), "--reload_interval", "5"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"TensorBoard exited with code {self.process.returncode}: "
                                   f"{self.process.stderr.read()[-2000:]}")
            try:
                self.get("data/plugins_listing")
                return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"TensorBoard did not answer on {self.url} within {timeout_s:.0f} s")

    def get(self, path: str, timeout: float = 10.0):
        """GET a path under the server; JSON bodies come back parsed."""
        with urllib.request.urlopen(self.url + path.lstrip("/"), timeout=timeout) as r:
            body = r.read()
            if "json" in r.headers.get("Content-Type", ""):
                return json.loads(body)
            return body

    def profiler_url(self) -> str:
        return self.url + "#pytorch_profiler"

    def stop(self) -> None:
        """End the server and every process it started (its process group)."""
        atexit.unregister(self.stop)
        for sig in (signal.SIGTERM, signal.SIGKILL):  # SIGKILL: what is left, helpers or a server that hung
            try:
                os.killpg(self.process.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.process.wait()

    def __enter__(self) -> TensorBoard:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.process.poll() is None else "stopped"
        return f"TensorBoard({self.url}, logdir={self.logdir}, {state})"


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM when the process that started it dies."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def tensorboard(logdir: str | Path | None = None, port: int | None = None) -> TensorBoard:
    """Start TensorBoard on 127.0.0.1 for `logdir` (default: where profiled runs write); returns the server."""
    return TensorBoard(logdir, port)
