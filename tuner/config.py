"""`EngineConfig` and `SamplingParams`: dataclasses generated from the knob registry, validated on creation;
and tuner's config files (tuner.config/1).

A config describes; it does not look at the machine. Every value and every combination is checked here,
on any machine, before any weights load: a bad one raises ValueError naming the knob and what is allowed.
What only a machine can tell (CUDA present, fp8 support, the checkpoint on disk, fast float16 on this CPU)
is checked when an Engine is built (tuner.engine.machine), so a config made on a GPU box loads, displays
and exports on a laptop.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from .knobs import ENGINE_KNOBS, SAMPLING_KNOBS, Knob, short_repr
from .models.args import ModelArgs, model_shapes, resolve_model


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
            raise ValueError(f"unknown {cls.__name__} knob(s) {short_repr(sorted(map(str, unknown)))}: known are "
                             f"{', '.join(cls._knobs)}")
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
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device={self.device!r} is not allowed: device must be 'cpu', 'cuda' or 'cuda:N'")
        on_cuda = self.device.startswith("cuda")
        if self.backend == "cupy" and not on_cuda:
            raise ValueError("backend='cupy' needs a CUDA device: on device='cpu' use backend='torch'")
        if self.backend == "cpu" and on_cuda:
            raise ValueError("backend='cpu' runs tuner's C kernels on device='cpu': on a GPU use 'torch' or 'cupy'")
        if self.backend == "cpu" and (self.dtype != "float32" or self.kv_dtype != "auto"):
            raise ValueError(f"backend='cpu' runs float32 models with kv_dtype='auto', not dtype={self.dtype!r} with "
                             f"kv_dtype={self.kv_dtype!r}: use those, or backend='torch'")
        if self.cuda_graphs and not on_cuda:
            raise ValueError("cuda_graphs=True needs a CUDA device: on device='cpu' set cuda_graphs=False")
        if self.backend == "cupy":
            from .backends.cupy_ops import unsupported_config

            why = unsupported_config(self.dtype, self.kv_dtype)
            if why:
                raise ValueError(why)
        for knob, value in (("quant", self.quant), ("kv_dtype", self.kv_dtype)):
            if value == "fp8" and not on_cuda:
                raise ValueError(f"{knob}='fp8' needs a CUDA GPU with compute capability 8.9 or newer; "
                                 f"device={self.device!r} has none: use 'int8' instead")
        if self.kv_cache == "paged" and self.num_blocks:
            need = -(-self.max_seq_len // self.block_size)
            if self.num_blocks < need:
                raise ValueError(f"num_blocks={self.num_blocks} cannot hold one sequence of max_seq_len="
                                 f"{self.max_seq_len} ({need} blocks of {self.block_size}): use at least {need} or 0")
        if self.enable_prefix_caching and self.kv_cache != "paged":
            raise ValueError("enable_prefix_caching=True shares KV blocks, which needs kv_cache='paged'")
        if self.enable_chunked_prefill and not self.max_num_batched_tokens:
            raise ValueError("enable_chunked_prefill=True splits prompts by the token budget: set "
                             "max_num_batched_tokens (e.g. 2048), or turn chunked prefill off")
        if self.max_num_batched_tokens and self.max_num_batched_tokens < self.batch_size:
            raise ValueError(f"max_num_batched_tokens={self.max_num_batched_tokens} is below batch_size="
                             f"{self.batch_size}: every running sequence's decode takes one token of the budget")
        args = model_shapes(self.model)  # raises for an unknown name or an unsupported family
        if args is not None:  # None: a checkpoint directory of another machine, checked where an Engine is built
            self.check_model(args)

    def check_model(self, args: ModelArgs) -> None:
        """The combinations that depend on the model's shapes (int4 groups, context length, the cupy kernels)."""
        if self.quant == "int4":
            widths = (args.dim, args.q_size, args.intermediate_size)
            for width, layer in zip(widths, ("wqkv/w13", "wo", "w2"), strict=True):
                if width % self.group_size:
                    ok = int4_groups(args)
                    raise ValueError(f"group_size={self.group_size} does not divide the input width {width} of "
                                     f"{layer} in {self.model}: allowed for this model: {ok or 'none'}")
        if self.max_seq_len > args.max_position_embeddings:
            raise ValueError(f"max_seq_len={self.max_seq_len} exceeds {self.model}'s max_position_embeddings="
                             f"{args.max_position_embeddings}: use at most that")
        if args.sliding_window is not None and self.max_seq_len > args.sliding_window:
            raise ValueError(f"max_seq_len={self.max_seq_len} exceeds {self.model}'s sliding_window="
                             f"{args.sliding_window}, which tuner does not implement: use at most that")
        if self.backend == "cpu":
            from .backends.cpu_ops import MAX_HEAD_DIM

            if args.head_dim % 2 or args.head_dim > MAX_HEAD_DIM:
                raise ValueError(f"backend='cpu' takes even head sizes up to {MAX_HEAD_DIM}, not {args.head_dim} "
                                 f"({self.model})")
        if self.backend == "cupy":  # the kernels' shapes and their 32-bit KV offsets
            from .backends import cupy_ops

            row = self.block_size if self.kv_cache == "paged" else self.max_seq_len
            why = cupy_ops.supported(args.head_dim, cupy_ops.DTYPES[self.dtype], args.n_heads, args.n_kv_heads) \
                or cupy_ops.stride_limit(args.n_kv_heads, args.head_dim, row)
            if why:
                raise ValueError(f"{why} ({self.model})")

    @property
    def model_args(self) -> ModelArgs:
        return resolve_model(self.model)[0]


EngineConfig = _make("EngineConfig", ENGINE_KNOBS, _EngineChecks,
                     "What to load and how to run it; validated against the knob registry on creation.")
SamplingParams = _make("SamplingParams", SAMPLING_KNOBS, _Validated,
                       "How to pick tokens in one generate() call; validated against the knob registry.")


# -- config files ---------------------------------------------------------------------------------------

CONFIG_SCHEMA = "tuner.config/1"
MAX_YAML_BYTES = 1 << 20  # a config or sweep file is a few KB; anything past this is refused unread


def read_yaml(source: str | Path, what: str) -> Any:
    """Safe YAML (no tags, nothing executed, no key given twice, at most MAX_YAML_BYTES) from a file, or from a
    YAML string when `source` is a str holding a newline or not naming a .yaml/.yml file. ValueError names the
    file (or `what`) and the place."""
    import yaml

    text, name = source, what
    if isinstance(source, Path) or ("\n" not in source and source.endswith((".yaml", ".yml"))):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{what} file {path} does not exist")
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ValueError(f"{path} is {path.stat().st_size} bytes: a {what} file is at most {MAX_YAML_BYTES}")
        name = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text (byte {e.start})") from None
    elif len(text) > MAX_YAML_BYTES:
        raise ValueError(f"the {what} is {len(text)} characters: at most {MAX_YAML_BYTES}")
    try:
        return yaml.load(text, Loader=_strict_loader())  # noqa: S506 - a SafeLoader that also refuses repeated keys
    except (yaml.YAMLError, RecursionError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ValueError(f"{name} is not plain YAML{where}: {first[:200]}") from None


def _strict_loader():
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                            key_node.start_mark)
                seen.add(key) if isinstance(key, (str, int, float, bool)) else None
            return super().construct_mapping(node, deep)

    return StrictLoader


def load_config(path: str | Path) -> tuple[EngineConfig, SamplingParams]:
    """Read a tuner.config/1 YAML (safe YAML: no tags, nothing executed) and validate every knob. A file written
    on another machine loads here; only building its Engine checks this machine."""
    path = Path(path)
    try:
        data = read_yaml(path, "tuner configuration")
    except ValueError as e:
        raise ValueError(f"{path} is not a tuner configuration: {str(e).removeprefix(str(path) + ' is ')}") from None
    if not isinstance(data, dict) or data.get("schema") != CONFIG_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path} is not a tuner configuration: schema is {short_repr(found)}, "
                         f"expected {CONFIG_SCHEMA!r}")
    extra = set(data) - {"schema", "engine", "sampling", "provenance"}
    if extra:
        raise ValueError(f"{path}: unknown sections {short_repr(sorted(map(str, extra)))} (a tuner.config/1 file "
                         "has engine, sampling, provenance)")
    engine, sampling = data.get("engine"), data.get("sampling", {})
    if not isinstance(engine, dict) or not isinstance(sampling, dict):
        raise ValueError(f"{path}: engine and sampling must be mappings of knob: value")
    try:
        return EngineConfig.from_dict(engine), SamplingParams.from_dict(sampling)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None


def int4_groups(args: ModelArgs) -> list[int]:
    """The int4 group sizes (group_size's choices) that divide every input width of this model's linears."""
    widths = (args.dim, args.q_size, args.intermediate_size)
    return [g for g in ENGINE_KNOBS["group_size"].choices if all(w % g == 0 for w in widths)]
