"""Op backends: `torch_ops` (the reference, on CPU and GPU) and `cupy_ops` (tuner's CUDA kernels), with the same
signatures. They sit on the ground floor and import nothing else of tuner: the model passes its weights and
the engine its KV cache in as arguments, through the two small interfaces below (docs/architecture.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


class KVStore(Protocol):
    """What a backend may use of a KV cache (tuner.engine.kv_cache implements it).

    K and V live as [layers, X, Hkv, Y, head_dim] and a token sits at (X, Y) = (block, offset); a contiguous
    cache is one block per sequence. A quantized cache keeps one fp32 scale per (token, head) in k_scale and
    v_scale ([layers, X, Hkv, Y]).
    """

    k: torch.Tensor
    v: torch.Tensor
    k_scale: torch.Tensor | None
    v_scale: torch.Tensor | None
    store: torch.dtype  # the storage dtype: the model dtype, int8 or float8_e4m3fn

    @property
    def quantized(self) -> bool: ...

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Store k, v [N, Hkv, D] of N tokens at slots (X indices, Y indices)."""

    def gather(self, layer: int, tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V [B, Hkv, n*Y, D] in the model dtype: every block of tables [B, n], in table order."""


class WeightLinear(Protocol):
    """What a backend may use of a linear layer (tuner.models.quant implements it): call it, or read its
    stored form. `scheme` names that form: "float", "int8" (weight [N, K] int8, scale [N]), "int4" (weight
    [N, K/2] two nibbles a byte, scale and zero [N, K/group_size]; packed_cpu: in the CPU kernel's layout
    instead) or "fp8"."""

    scheme: str
    weight: torch.Tensor
    bias: torch.Tensor | None

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...
