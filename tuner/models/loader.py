"""Build a Transformer from a local HF checkpoint (safetensors, memory-mapped) or from dummy weights.

Weights are filled one destination tensor at a time: q/k/v and gate/up are copied into fused
tensors, a quantized layer replaces its float weight as soon as it is filled, and each source
tensor's mapped pages leave the process after the copy, so peak memory stays near the final weight bytes.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

from .args import ModelArgs
from .gguf import is_gguf, open_gguf
from .memory import all_finite, release_freed_memory
from .model import Layer, Transformer
from .quant import Embedding, Int8Embedding, Int8Linear, Linear, TiedLMHead, make_linear

_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
DUMMY_RANGE = 1e-3  # vLLM's dummy loader: uniform in [-1e-3, 1e-3]


class _Checkpoint:
    """Every *.safetensors file of a directory (sharded or not), by tensor name, read through `safetensors`.

    Each tensor is read from a file opened (memory-mapped) for it alone: the pages it touched leave this
    process when the file closes, so resident memory holds the destination tensors and one source at a time.
    """

    def __init__(self, path: Path):
        self.where: dict[str, Path] = {}
        dtypes: dict[str, str] = {}  # the header's dtype of each tensor ("F16", "BF16", "I32", ...)
        for file in sorted(path.glob("*.safetensors")):
            for name, dtype in _open(file, lambda f: [(n, f.get_slice(n).get_dtype()) for n in f.keys()]):
                if name in self.where:  # which copy is meant cannot be guessed
                    raise ValueError(f"checkpoint tensor {name} is in two shards, {self.where[name].name} and "
                                     f"{file.name}: remove the stale shard")
                self.where[name] = file
                dtypes[name] = dtype
        _check_index(path, self.where)
        self._check_half_dtypes(dtypes)
        self.used: set[str] = set()

    def _check_half_dtypes(self, dtypes: dict[str, str]) -> None:
        """float16 and bfloat16 tensors in one checkpoint: no tool saves that, and the two have the same size, so
        a header relabelled from one to the other still matches its byte ranges and would load as garbage."""
        first = {d: n for n, d in reversed(dtypes.items()) if d in ("F16", "BF16")}
        if len(first) == 2:
            a, b = first["F16"], first["BF16"]
            raise ValueError(f"checkpoint mixes float16 ({a} in {self.where[a].name}) and bfloat16 ({b} in "
                             f"{self.where[b].name}) tensors: one of the headers is relabelled or damaged")

    def fill(self, dst: torch.Tensor, name: str) -> None:
        if name not in self.where:
            raise ValueError(f"checkpoint has no tensor {name!r}: is it a complete, supported checkpoint?")
        file = self.where[name]

        def copy(f) -> None:
            src = f.get_tensor(name)
            if dst.is_floating_point() and not src.is_floating_point():  # a float weight relabelled I32, U16, ...
                raise ValueError(f"checkpoint tensor {name} in {file.name} is stored as {str(src.dtype)[6:]}, where "
                                 "a floating-point weight belongs: its header's dtype is relabelled or damaged")
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(f"checkpoint tensor {name} has shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
            dst.copy_(src)

        _open(file, copy)
        if dst.is_floating_point() and not all_finite(dst):  # one read of what just landed
            raise ValueError(f"checkpoint tensor {name} in {file.name} holds NaN or infinite values: the checkpoint "
                             "is damaged (or was saved from a diverged model)")
        self.used.add(name)

    def check_all_used(self, allowed_unused: set[str]) -> None:
        unused = [n for n in self.where if n not in self.used and n not in allowed_unused
                  and not n.endswith(_IGNORED_SUFFIXES)]
        if unused:
            raise ValueError(f"checkpoint has {len(unused)} tensor(s) tuner does not know, e.g. {unused[:3]}: "
                             "is the architecture in config.json right?")


def _open(file: Path, use):
    """use(the file opened by safetensors); ValueError naming the file for anything it cannot read."""
    from safetensors import SafetensorError

    try:
        with safe_open(file, framework="pt") as f:
            return use(f)
    except SafetensorError as e:
        raise ValueError(f"{file} is not a readable safetensors file: {str(e)[:200]}") from None
    except OSError as e:
        raise ValueError(f"{file} cannot be read: {e.strerror or e}") from None


def _check_index(path: Path, where: dict[str, Path]) -> None:
    """model.safetensors.index.json, where there is one, must agree with the shards on disk."""
    index = path / "model.safetensors.index.json"
    if not index.is_file():
        return
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{index} is not a safetensors index (a JSON object with a weight_map): {e}") from None
    for name, shard in weight_map.items():
        if not (path / shard).is_file():
            raise ValueError(f"{index.name} lists {shard} (for {name}), which is not in {path}")
        if name in where and where[name].name != shard:
            raise ValueError(f"{index.name} puts {name} in {shard}, but it is in {where[name].name}")


class _Dummy:
    """Seeded uniform values in [-1e-3, 1e-3], one stream per tensor name."""

    def __init__(self, seed: int):
        self.seed = seed

    def fill(self, dst: torch.Tensor, name: str) -> None:
        g = torch.Generator(device=dst.device)
        g.manual_seed((self.seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
        dst.uniform_(-DUMMY_RANGE, DUMMY_RANGE, generator=g)


def build_model(args: ModelArgs, checkpoint: Path | None, dtype: torch.dtype, device: torch.device,
                quant: str = "none", group_size: int = 128, seed: int = 0,
                progress: Callable[[int, int], None] | None = None, native: bool = False) -> Transformer:
    """Fill a Transformer from `checkpoint` (None: dummy weights), quantizing layer weights as they land.
    native=True (the cpu backend) stores every layer's weight in the form tuner's CPU kernels read (see
    quant.make_linear), so its C decode step runs all layers."""
    source = _Dummy(seed) if checkpoint is None else open_gguf(checkpoint).weights() if is_gguf(checkpoint) else \
        _Checkpoint(checkpoint)

    def tensor(shape, *names: str) -> torch.Tensor:
        """A new tensor of `shape` made of the named source tensors stacked along dim 0."""
        out = torch.empty(shape, dtype=dtype, device=device)
        row = 0
        for name in names:
            rows = _source_rows(args, name, shape)
            source.fill(out[row:row + rows], name)
            row += rows
        return out

    def linear(out_in, prefix: str, names: list[str], bias: bool) -> Linear:
        w = tensor(out_in, *(f"{prefix}.{n}.weight" for n in names))
        b = tensor((out_in[0],), *(f"{prefix}.{n}.bias" for n in names)) if bias else None
        return make_linear(w, b, quant, group_size, native)

    shapes = args.linear_shapes()
    layers = []
    for i in range(args.n_layers):
        p = f"model.layers.{i}"
        qk_norm = None
        if args.qk_norm:
            q_norm = tensor((args.head_dim,), f"{p}.self_attn.q_norm.weight")
            k_norm = tensor((args.head_dim,), f"{p}.self_attn.k_norm.weight")
            qk_norm = torch.cat([q_norm.expand(args.n_heads, -1), k_norm.expand(args.n_kv_heads, -1)])
        layers.append(Layer(
            attn_norm=tensor((args.dim,), f"{p}.input_layernorm.weight"),
            wqkv=linear(shapes["wqkv"], f"{p}.self_attn", ["q_proj", "k_proj", "v_proj"], args.qkv_bias),
            qk_norm=qk_norm,
            wo=linear(shapes["wo"], f"{p}.self_attn", ["o_proj"], args.o_bias),
            mlp_norm=tensor((args.dim,), f"{p}.post_attention_layernorm.weight"),
            w13=linear(shapes["w13"], f"{p}.mlp", ["gate_proj", "up_proj"], args.mlp_bias),
            w2=linear(shapes["w2"], f"{p}.mlp", ["down_proj"], args.mlp_bias),
        ))
        release_freed_memory()
        if progress:
            progress(i + 1, args.n_layers)
    embed, lm_head = _ends(args, tensor, quant, native)
    norm = tensor((args.dim,), "model.norm.weight")
    if not isinstance(source, _Dummy):
        source.check_all_used({"lm_head.weight"} if args.tie_word_embeddings else set())
    return Transformer(args, embed, layers, norm, lm_head)


def _ends(args: ModelArgs, tensor, quant: str, native: bool):
    """The embedding and the output projection. With int8/int4 the output projection is int8 (per vocab row);
    tied, one table serves both: a float one unpacked, or the int8 one whose rows the embedding dequantizes."""
    head_quant = "int8" if quant in ("int8", "int4") else "none"
    if not args.tie_word_embeddings:
        head = make_linear(tensor((args.vocab_size, args.dim), "lm_head.weight"), None, head_quant, 0, native)
        release_freed_memory()
        return Embedding(tensor((args.vocab_size, args.dim), "model.embed_tokens.weight")), head
    table = tensor((args.vocab_size, args.dim), "model.embed_tokens.weight")
    if head_quant == "int8":
        head = Int8Linear(table, native=native or None)
        return Int8Embedding(head), head
    return Embedding(table), TiedLMHead(table)


def _source_rows(args: ModelArgs, name: str, shape: tuple) -> int:
    """Rows (dim 0) that source tensor `name` contributes to a fused destination of `shape`."""
    if ".q_proj." in name:
        return args.q_size
    if ".k_proj." in name or ".v_proj." in name:
        return args.kv_size
    if ".gate_proj." in name or ".up_proj." in name:
        return args.intermediate_size
    return shape[0]


def load_tokenizer(checkpoint: Path | None):
    """The checkpoint's own tokenizer from local files (a GGUF file's from its metadata), or None."""
    if checkpoint is not None and is_gguf(checkpoint):
        return open_gguf(checkpoint).tokenizer()
    if checkpoint is None or not any((checkpoint / f).exists() for f in ("tokenizer.json", "tokenizer.model",
                                                                         "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - JSON, protobuf or sentencepiece errors name no file otherwise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ValueError(f"the tokenizer files in {checkpoint} cannot be read: {first}") from None


def eos_token_ids(args: ModelArgs, checkpoint: Path | None) -> tuple[int, ...]:
    """EOS ids from generation_config.json when present, else config.json's."""
    gen = checkpoint / "generation_config.json" if checkpoint is not None and not is_gguf(checkpoint) else None
    if gen is not None and gen.is_file():
        try:
            data = json.loads(gen.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise ValueError(f"{gen} is not readable JSON: {e}") from None
        eos = data.get("eos_token_id") if isinstance(data, dict) else None
        ids = tuple(eos) if isinstance(eos, list) else (eos,) if eos is not None else ()
        if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
            raise ValueError(f"{gen}: eos_token_id={eos!r} is not a token id or a list of them")
        if ids:
            return ids
    return args.eos_token_ids
