"""What only the machine an Engine is built on can tell: whether this config can run here.

EngineConfig checks values and combinations on any machine (tuner.config); these checks need this one:
CUDA and the device index, fp8 support, the checkpoint on disk (a directory of safetensors or a GGUF file),
and fast float16 matmuls on this CPU. (Whether the cupy kernels serve the model's shapes is a config check.)
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import EngineConfig
from ..models.args import ModelArgs, resolve_model
from ..models.quant import OneDNNLinear
from ..profile import cost
from ..profile.hardware import available_memory_bytes, check_device, has_fp8


class NotEnoughMemoryError(ValueError):
    """The engine's weights and KV cache would not fit in the memory this device has free."""


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
    if config.weights == "auto" and checkpoint is not None and checkpoint.is_dir() and \
            not any(checkpoint.glob("*.safetensors")):
        raise ValueError(f"weights='auto' but {checkpoint} holds no *.safetensors files: "
                         "convert the checkpoint to safetensors or use weights='dummy'")
    if config.device == "cpu" and config.dtype == "float16" and not cpu_has_fast_float16():
        raise ValueError("dtype='float16' has no fast matmul on this CPU (torch would run it for minutes): "
                         "use dtype='bfloat16' or 'float32'")
    if config.backend == "cpu":
        from ..backends import cpu_kernels

        if cpu_kernels.library() is None:
            raise ValueError(f"backend='cpu' needs tuner's C kernels, which cannot be built here "
                             f"({cpu_kernels.why_not()}): use backend='torch'")
    check_memory(config, args)
    return args, checkpoint


def resolve_backend(config: EngineConfig, args: ModelArgs) -> EngineConfig:
    """`config` with backend='auto' made concrete for this machine: 'cpu' (tuner's C kernels) on a CPU for a
    float32 model with kv_dtype='auto' and a head size the kernels take, where the kernels can be built here;
    otherwise 'torch'. Any other backend is returned as it is."""
    if config.backend != "auto":
        return config
    try:  # the config's own checks of backend='cpu' (device, dtype, kv_dtype, head size)
        cpu = config.replace(backend="cpu")
        cpu.check_model(args)
    except ValueError:
        return config.replace(backend="torch")
    from ..backends import cpu_kernels

    return cpu if cpu_kernels.library() is not None else config.replace(backend="torch")


def check_memory(config: EngineConfig, args: ModelArgs) -> None:
    """NotEnoughMemoryError, with both figures, when the weights and KV cache (cost.memory_bytes) exceed what the
    device has free: refused at once instead of loading for minutes and failing."""
    free = available_memory_bytes(config.device)
    if free is None:
        return
    if config.kv_cache == "paged":
        blocks = config.num_blocks or config.batch_size * -(-config.max_seq_len // config.block_size)
        slots = blocks * config.block_size
    else:
        slots = config.batch_size * config.max_seq_len
    need = cost.memory_bytes(args, cost.Precision.of(config.to_dict()), slots)
    total = sum(need.values())
    if total > free:
        gib = 2**30
        raise NotEnoughMemoryError(
            f"not enough memory for {config.model} on {config.device}: it needs ~{total / gib:.1f} GiB (weights "
            f"{need['weights'] / gib:.1f}, KV cache {need['kv_cache'] / gib:.1f}) but {free / gib:.1f} GiB are "
            "available: lower dtype, quant, batch_size, max_seq_len or num_blocks")


def check_prefill(config: EngineConfig, args: ModelArgs, batch: int, tokens: int) -> None:
    """NotEnoughMemoryError, with both figures, when a prefill of `batch` prompts of up to `tokens` tokens would
    take more activation memory (cost.prefill_bytes) than the device has free: refused before a token is made."""
    free = available_memory_bytes(config.device)
    if free is None:
        return
    need = cost.prefill_bytes(args, cost.Precision.of(config.to_dict()), batch, tokens)
    if need > free:
        gib = 2**30
        raise NotEnoughMemoryError(
            f"not enough memory to prefill {batch} prompts of {tokens} tokens on {config.device}: it needs "
            f"~{need / gib:.1f} GiB of activations but {free / gib:.1f} GiB are available: lower batch_size or "
            "shorten the prompts")


def cpu_has_fast_float16() -> bool:
    """Whether this CPU runs float16 matmuls through oneDNN (AVX512-FP16 / AMX-FP16), not torch's slow loop."""
    return OneDNNLinear.available(torch.empty(0, dtype=torch.float16))
