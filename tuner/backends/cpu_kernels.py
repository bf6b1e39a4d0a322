"""tuner's CPU kernels (kernels/cpu_gemv.c, cpu_decode.c), built with this machine's C compiler on first use:
weight-only int8 and int4 matrix products that read each weight byte once and keep float32 activations, and the
fused float32 ops of a decode step (tuner.backends.cpu_ops, the `cpu` backend).

torch's own CPU kernels for these formats (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) take bf16
activations and, at decode's one row, run below memory speed on a 2-core VM (benchmarks/vs_llamacpp.py's note);
these run at it. The library is compiled once per source, compiler and CPU into ~/.cache/tuner/cpu (or
$TUNER_CACHE/cpu) with `gcc -O3 -march=native -fopenmp`, and loaded with ctypes. Without a compiler `library()` is
None and `why_not()` says why: the quantized layers then use torch's kernels.

Like every backend this imports nothing of tuner.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCES = ("cpu_gemv.c", "cpu_decode.c")  # one library
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11")
MAX_M = 8  # rows of x that share one pass over the weight (MAX_M in the source)
NATIVE_ROWS = 2 * MAX_M  # rows up to which decode products run these kernels; more rows (prefill) take torch's
# kernels or a dequantized weight, which reuse each weight across many rows


class Linear(ctypes.Structure):
    """tuner_linear (cpu_decode.c): one layer's weight as the kernels read it."""

    FLOAT, INT8, INT4 = 0, 1, 2
    _fields_ = [("kind", ctypes.c_int32), ("N", ctypes.c_int32), ("K", ctypes.c_int32), ("G", ctypes.c_int32),
                ("w", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("zero", ctypes.c_void_p),
                ("bias", ctypes.c_void_p)]


class Layer(ctypes.Structure):
    """tuner_layer (cpu_decode.c): a decoder layer's norms, KV pools and four products."""

    _fields_ = [("attn_norm", ctypes.c_void_p), ("mlp_norm", ctypes.c_void_p), ("qk_norm", ctypes.c_void_p),
                ("kpool", ctypes.c_void_p), ("vpool", ctypes.c_void_p), ("qkv", Linear), ("o", Linear),
                ("gate_up", Linear), ("down", Linear)]

_lib: ctypes.CDLL | None = None
_why: str | None = None
_tried = False


def source_paths() -> list[Path]:
    """kernels/cpu_*.c inside the installed package (the wheel), else beside it in a source checkout."""
    here = Path(__file__).resolve().parent.parent
    for d in (here / "kernels", here.parent / "kernels"):
        if all((d / s).exists() for s in SOURCES):
            return [d / s for s in SOURCES]
    raise FileNotFoundError(f"tuner's CPU kernel sources are missing: looked for kernels/{', '.join(SOURCES)} in "
                            f"{here} and {here.parent}")


def _cache_dir() -> Path:
    root = os.environ.get("TUNER_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                           os.path.expanduser("~/.cache"), "tuner")
    return Path(root) / "cpu"


def _cpu_id() -> str:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    return flags


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def build() -> Path:
    """The compiled library for this source, compiler and CPU (compiled now if it is not in the cache)."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler (gcc or $CC) on PATH")
    srcs = source_paths()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    key = hashlib.sha256("\0".join([*(s.read_text() for s in srcs), version, *FLAGS, _cpu_id()]).encode())
    key = key.hexdigest()[:16]
    out = _cache_dir() / f"cpu_gemv-{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            part = Path(tmp) / out.name
            done = subprocess.run([cc, *FLAGS, *map(str, srcs), "-o", str(part), "-lm"], capture_output=True,
                                  text=True)
            if done.returncode:
                raise RuntimeError(f"{cc} failed on {', '.join(map(str, srcs))}: {done.stderr.strip()[:2000]}")
            os.replace(part, out)  # atomic: another process may build the same file
    return out


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None where they cannot be built here (see why_not()). TUNER_CPU_KERNELS=0 turns
    them off (the quantized layers then run torch's kernels)."""
    global _lib, _why, _tried
    if not _tried:
        _tried = True
        if os.environ.get("TUNER_CPU_KERNELS", "1") == "0":
            _why = "turned off by TUNER_CPU_KERNELS=0"
        else:
            try:
                lib = ctypes.CDLL(str(build()))
            except (OSError, RuntimeError, FileNotFoundError) as e:
                _why = str(e)
            else:
                p, i = ctypes.c_void_p, ctypes.c_int
                lib.tuner_int8_gemv.argtypes = [p, i, i, p, p, p, p, i]
                lib.tuner_int8_gemv.restype = None
                lib.tuner_int4_gemv.argtypes = [p, i, i, p, p, p, p, i, p, i]
                lib.tuner_int4_gemv.restype = i
                lib.tuner_f32_gemv.argtypes = [p, i, i, p, p, p, i]
                lib.tuner_f32_gemv.restype = None
                lib.tuner_int8_dequant.argtypes = [p, p, i, i, p]
                lib.tuner_int8_dequant.restype = None
                lib.tuner_int4_dequant.argtypes = [p, p, p, i, i, i, p]
                lib.tuner_int4_dequant.restype = None
                f, L = ctypes.c_float, ctypes.c_int64
                lib.tuner_add_rms_norm.argtypes = [p, p, p, f, p, i, i]
                lib.tuner_add_rms_norm.restype = None
                lib.tuner_silu_mul.argtypes = [p, p, i, i]
                lib.tuner_silu_mul.restype = None
                lib.tuner_rope_kv_write.argtypes = [p, L, p, f, p, p, p, p, p, L, L, L, p, i, i, p, i, i, i, i]
                lib.tuner_rope_kv_write.restype = None
                lib.tuner_decode_attention.argtypes = [p, p, p, L, L, L, p, i, i, p, p, i, i, i, i]
                lib.tuner_decode_attention.restype = i
                lib.tuner_decode_layers.argtypes = [p, i, p, f, p, p, p, p, p, i, i, L, L, L, p, p, i, i, i, i]
                lib.tuner_decode_layers.restype = i
                _lib = lib
    return _lib


def why_not() -> str | None:
    """Why the CPU kernels are not in use, or None when they are."""
    library()
    return _why


def _check(name: str, t: torch.Tensor, dtype: torch.dtype, shape: tuple) -> None:
    if t.device.type != "cpu" or t.dtype != dtype or tuple(t.shape) != shape or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous CPU {dtype} tensor of shape {shape}, got "
                         f"{t.device.type} {t.dtype} {tuple(t.shape)}{'' if t.is_contiguous() else ' (strided)'}")


def _check_x(x: torch.Tensor, K: int) -> None:
    if x.dtype != torch.float32 or not x.is_contiguous() or x.dim() != 2 or x.shape[1] != K:
        _check("x", x, torch.float32, (x.shape[0], K))


def _check_blocks(NB: int, N: int) -> None:
    if NB != -(-N // 16):
        raise ValueError(f"packed holds {NB} blocks of 16 rows, not the {-(-N // 16)} of N={N}")


def _rows16(t: torch.Tensor) -> torch.Tensor:
    """[N, C] -> [ceil(N/16), C, 16]: rows in blocks of 16 (zeros past N), a block's rows side by side."""
    pad = -t.shape[0] % 16
    t = torch.cat([t, t.new_zeros(pad, *t.shape[1:])]) if pad else t
    return t.view(-1, 16, t.shape[1]).transpose(1, 2).contiguous()


def _rows(t: torch.Tensor, N: int) -> torch.Tensor:
    """_rows16 undone: [NB, C, 16] -> [N, C]."""
    return t.transpose(1, 2).reshape(-1, t.shape[1])[:N]


def pack_int8(q: torch.Tensor, scale: torch.Tensor):
    """The int8 kernel's layout from q [N, K] int8 and scale [N] bf16: (packed [ceil(N/16), K, 16], scale
    [16 ceil(N/16)]), zeros past N."""
    return _rows16(q), _rows16(scale[:, None]).flatten()


def unpack_int8(packed: torch.Tensor, scale: torch.Tensor, N: int):
    """pack_int8 undone: (q [N, K], scale [N])."""
    return _rows(packed, N), scale[:N]


def int8_gemv(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, N: int,
              checked: bool = True) -> torch.Tensor:
    """x [M, K] float32 @ (q * scale).T (+ bias [N]) -> [M, N] float32 in pack_int8's layout: packed
    [ceil(N/16), K, 16] int8, scale [16 ceil(N/16)] bf16. checked=False skips the checks of packed, scale and bias,
    for a layer that made them once (x is always checked)."""
    NB, K = packed.shape[0], packed.shape[1]
    M = x.shape[0]
    _check_x(x, K)
    if checked:
        _check_blocks(NB, N)
        _check("packed", packed, torch.int8, (NB, K, 16))
        _check("scale", scale, torch.bfloat16, (16 * NB,))
        if bias is not None:
            _check("bias", bias, torch.float32, (N,))
    y = torch.empty(M, N)
    library().tuner_int8_gemv(x.data_ptr(), M, K, packed.data_ptr(), scale.data_ptr(),
                              None if bias is None else bias.data_ptr(), y.data_ptr(), N)
    return y


def int8_dequant(packed: torch.Tensor, scale: torch.Tensor, N: int) -> torch.Tensor:
    """The float32 weight q * scale [N, K] of pack_int8's layout (a layer's own tensors: not checked)."""
    K = packed.shape[1]
    out = torch.empty(N, K)
    library().tuner_int8_dequant(packed.data_ptr(), scale.data_ptr(), N, K, out.data_ptr())
    return out


def pack_int4(nibbles: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor):
    """The int4 kernel's layout from nibbles [N, K/2] uint8 (low nibble = even k) and scale, zero [N, K/G] bf16:
    (packed [NB, K/2, 16], scale [NB, K/G, 16], zero [NB, K/G, 16]), NB = ceil(N/16), zeros past N."""
    return _rows16(nibbles), _rows16(scale), _rows16(zero)


def unpack_int4(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, N: int):
    """pack_int4 undone: (nibbles [N, K/2], scale [N, K/G], zero [N, K/G])."""
    return _rows(packed, N), _rows(scale, N), _rows(zero, N)


def int4_dequant(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int,
                 N: int) -> torch.Tensor:
    """The float32 weight (q - 8) * scale + zero [N, K] of pack_int4's layout (a layer's own tensors: not
    checked)."""
    K = packed.shape[1] * 2
    out = torch.empty(N, K)
    library().tuner_int4_dequant(packed.data_ptr(), scale.data_ptr(), zero.data_ptr(), group_size, N, K,
                                 out.data_ptr())
    return out


def int4_gemv(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
              bias: torch.Tensor | None, group_size: int, N: int, checked: bool = True) -> torch.Tensor:
    """x [M, K] float32 @ W.T (+ bias) -> [M, N] float32, W = (q - 8) * scale + zero per group of `group_size`, in
    pack_int4's layout: packed [ceil(N/16), K/2, 16] uint8, scale and zero [ceil(N/16), K/group_size, 16] bf16.
    checked=False skips the checks of the weight tensors, for a layer that made them once (x is always checked)."""
    NB, K = packed.shape[0], packed.shape[1] * 2
    M = x.shape[0]
    _check_x(x, K)
    if checked:
        if group_size % 2 or K % group_size:
            raise ValueError(f"group_size={group_size} must be even and divide K={K}")
        _check_blocks(NB, N)
        _check("packed", packed, torch.uint8, (NB, K // 2, 16))
        _check("scale", scale, torch.bfloat16, (NB, K // group_size, 16))
        _check("zero", zero, torch.bfloat16, (NB, K // group_size, 16))
        if bias is not None:
            _check("bias", bias, torch.float32, (N,))
    y = torch.empty(M, N)
    if library().tuner_int4_gemv(x.data_ptr(), M, K, packed.data_ptr(), scale.data_ptr(), zero.data_ptr(),
                                 None if bias is None else bias.data_ptr(), group_size, y.data_ptr(), N):
        raise MemoryError(f"int4_gemv: no memory for the group sums of its {M} rows")
    return y


def f32_gemv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None,
             checked: bool = True) -> torch.Tensor:
    """x [M, K] float32 @ w [N, K].T (+ bias [N]) -> [M, N] float32, each weight row read from memory once for all
    rows of x.
    checked=False skips the checks of w and bias (x is always checked)."""
    N, K = w.shape
    M = x.shape[0]
    _check_x(x, K)
    if checked:
        _check("w", w, torch.float32, (N, K))
        if bias is not None:
            _check("bias", bias, torch.float32, (N,))
    y = torch.empty(M, N)
    library().tuner_f32_gemv(x.data_ptr(), M, K, w.data_ptr(), None if bias is None else bias.data_ptr(),
                             y.data_ptr(), N)
    return y
