"""What only the machine an Engine is built on can tell: whether this config can run here.

EngineConfig checks values and combinations on any machine (tuner.config); these checks need this one:
CUDA and the device index, fp8 support, the checkpoint on disk, fast float16 matmuls on this CPU, and
whether the cupy kernels serve this model's shapes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..backends import cupy_ops
from ..config import EngineConfig
from ..models.args import ModelArgs, resolve_model
from ..models.quant import OneDNNLinear
from ..profile.hardware import check_device, has_fp8


def check_machine(config: EngineConfig) -> tuple[ModelArgs, Path | None]:
    """ValueError naming what this machine lacks for `config`; else the model's shapes and checkpoint directory
    (None for a preset)."""
    check_device(config.device)
    for knob, value in (("quant", config.quant), ("kv_dtype", config.kv_dtype)):
        if value == "fp8" and not has_fp8(config.device):
            raise ValueError(f"{knob}='fp8' needs a CUDA GPU with compute capability 8.9 or newer; "
                             f"device={config.device!r} has none: use 'int8' instead")
    args, checkpoint = resolve_model(config.model)  # a checkpoint directory must be here now
    config.check_model(args)
    if config.weights == "auto" and checkpoint is not None and not any(checkpoint.glob("*.safetensors")):
        raise ValueError(f"weights='auto' but {checkpoint} holds no *.safetensors files: "
                         "convert the checkpoint to safetensors or use weights='dummy'")
    if config.device == "cpu" and config.dtype == "float16" and not cpu_has_fast_float16():
        raise ValueError("dtype='float16' has no fast matmul on this CPU (torch would run it for minutes): "
                         "use dtype='bfloat16' or 'float32'")
    if config.backend == "cupy":
        why = cupy_ops.supported(args.head_dim, cupy_ops.DTYPES[config.dtype], args.n_heads, args.n_kv_heads)
        if why:
            raise ValueError(f"{why} ({config.model}): use backend='torch'")
    return args, checkpoint


def cpu_has_fast_float16() -> bool:
    """Whether this CPU runs float16 matmuls through oneDNN (AVX512-FP16 / AMX-FP16), not torch's slow loop."""
    return OneDNNLinear.available(torch.empty(0, dtype=torch.float16))
