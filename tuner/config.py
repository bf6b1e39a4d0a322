"""`EngineConfig` and `SamplingParams`: dataclasses generated from the knob registry, validated on creation.

Every check that can fail runs here, before any weights load: a bad value or an impossible
combination raises ValueError naming the knob and what is allowed.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from .knobs import ENGINE_KNOBS, SAMPLING_KNOBS, Knob


class _Validated:
    _knobs: dict[str, Knob]

    def __post_init__(self) -> None:
        for name, knob in self._knobs.items():
            object.__setattr__(self, name, knob.check(getattr(self, name)))
        self._check_combinations()

    def _check_combinations(self) -> None:
        pass

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        unknown = set(d) - set(cls._knobs)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} knob(s) {sorted(unknown)}: known are {', '.join(cls._knobs)}")
        return cls(**d)

    def replace(self, **changes):
        """A copy with some knobs changed (validated again)."""
        unknown = set(changes) - set(self._knobs)
        if unknown:
            raise ValueError(f"unknown {type(self).__name__} knob(s) {sorted(unknown)}: known are "
                             f"{', '.join(self._knobs)}")
        return dataclasses.replace(self, **changes)


def _make(name: str, knobs: dict[str, Knob], base: type, doc: str) -> type:
    fields = [(k.name, k.type, dataclasses.field(default=k.default)) for k in knobs.values()]
    cls = dataclasses.make_dataclass(name, fields, bases=(base,), frozen=True, namespace={"_knobs": knobs})
    cls.__doc__ = doc + "\n\n" + "\n".join(f"{k.name}: {k.help} (default {k.default!r}; {k.allowed()})"
                                           for k in knobs.values())
    cls.__module__ = __name__
    return cls


class _EngineChecks(_Validated):
    def _check_combinations(self) -> None:
        from .models.args import resolve_model

        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device={self.device!r} is not allowed: device must be 'cpu', 'cuda' or 'cuda:N'")
        on_cuda = self.device.startswith("cuda")
        if on_cuda:
            _check_cuda(self.device)
        if self.backend == "cupy" and not on_cuda:
            raise ValueError("backend='cupy' needs a CUDA device: on device='cpu' use backend='torch'")
        if self.cuda_graphs and not on_cuda:
            raise ValueError("cuda_graphs=True needs a CUDA device: on device='cpu' set cuda_graphs=False")
        if self.backend == "cupy":
            if self.dtype not in ("bfloat16", "float16"):
                raise ValueError(f"backend='cupy' runs dtype 'bfloat16' or 'float16', not {self.dtype!r}")
            if self.kv_dtype == "fp8":
                raise ValueError("backend='cupy' stores the KV cache as kv_dtype 'auto' or 'int8', not 'fp8'")
        if self.device == "cpu" and self.dtype == "float16" and not _cpu_has_fast_float16():
            raise ValueError("dtype='float16' has no fast matmul on this CPU (torch would run it for minutes): "
                             "use dtype='bfloat16' or 'float32'")
        for knob, value in (("quant", self.quant), ("kv_dtype", self.kv_dtype)):
            if value == "fp8" and not _has_fp8(self.device):
                raise ValueError(f"{knob}='fp8' needs a CUDA GPU with compute capability 8.9 or newer; "
                                 f"device={self.device!r} has none: use 'int8' instead")
        args, ckpt = resolve_model(self.model)  # raises for an unknown model or an unsupported family
        if self.weights == "auto" and ckpt is not None and not any(ckpt.glob("*.safetensors")):
            raise ValueError(f"weights='auto' but {ckpt} holds no *.safetensors files: "
                             "convert the checkpoint to safetensors or use weights='dummy'")
        if self.quant == "int4":
            for width, layer in ((args.dim, "wqkv/w13"), (args.q_size, "wo"), (args.intermediate_size, "w2")):
                if width % self.group_size:
                    ok = [g for g in ENGINE_KNOBS["group_size"].choices
                          if all(w % g == 0 for w in (args.dim, args.q_size, args.intermediate_size))]
                    raise ValueError(f"group_size={self.group_size} does not divide the input width {width} of "
                                     f"{layer} in {self.model}: allowed for this model: {ok or 'none'}")
        if self.max_seq_len > args.max_position_embeddings:
            raise ValueError(f"max_seq_len={self.max_seq_len} exceeds {self.model}'s max_position_embeddings="
                             f"{args.max_position_embeddings}: use at most that")
        if args.sliding_window is not None and self.max_seq_len > args.sliding_window:
            raise ValueError(f"max_seq_len={self.max_seq_len} exceeds {self.model}'s sliding_window="
                             f"{args.sliding_window}, which tuner does not implement: use at most that")
        if self.kv_cache == "paged" and self.num_blocks:
            need = -(-self.max_seq_len // self.block_size)
            if self.num_blocks < need:
                raise ValueError(f"num_blocks={self.num_blocks} cannot hold one sequence of max_seq_len="
                                 f"{self.max_seq_len} ({need} blocks of {self.block_size}): use at least {need} or 0")

    @property
    def model_args(self):
        from .models.args import resolve_model

        return resolve_model(self.model)[0]


def _check_cuda(device: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here (torch {torch.__version__}): "
                         "use device='cpu'")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s) exist")


def _cpu_has_fast_float16() -> bool:
    import torch

    from .engine.quant import OneDNNLinear

    return OneDNNLinear.available(torch.empty(0, dtype=torch.float16))


def _has_fp8(device: str) -> bool:
    if not device.startswith("cuda"):
        return False
    import torch

    return torch.cuda.get_device_capability(torch.device(device)) >= (8, 9)


class _SamplingChecks(_Validated):
    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


EngineConfig = _make("EngineConfig", ENGINE_KNOBS, _EngineChecks,
                     "What to load and how to run it; validated against the knob registry on creation.")
SamplingParams = _make("SamplingParams", SAMPLING_KNOBS, _SamplingChecks,
                       "How to pick tokens in one generate() call; validated against the knob registry.")
