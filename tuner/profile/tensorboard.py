"""Start TensorBoard (with the torch-tb-profiler plugin) on 127.0.0.1 over tuner's profiled runs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .capture import default_logdir


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
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(self.logdir), "--host", "127.0.0.1",
             "--port", str(self.port), "--reload_interval", "5"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> TensorBoard:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.process.poll() is None else "stopped"
        return f"TensorBoard({self.url}, logdir={self.logdir}, {state})"


def tensorboard(logdir: str | Path | None = None, port: int | None = None) -> TensorBoard:
    """Start TensorBoard on 127.0.0.1 for `logdir` (default: where profiled runs write); returns the server."""
    return TensorBoard(logdir, port)
