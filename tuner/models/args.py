"""Model shapes: `ModelArgs` from a Hugging Face config, and presets with real models' shapes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .gguf import NAMED, is_gguf, named_file, open_gguf

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class ModelArgs:
    family: str
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float
    rope_theta: float
    rope_scaling: dict | None  # {"rope_type": "llama3"|"linear", ...} or None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool  # bias on q/k/v projections (Qwen2, Llama attention_bias)
    o_bias: bool  # bias on o_proj (Llama attention_bias)
    mlp_bias: bool
    qk_norm: bool  # per-head RMSNorm of q and k before RoPE (Qwen3)
    sliding_window: int | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]

    @property
    def q_size(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.n_kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(out, in) of each per-layer linear as tuner stores it (q/k/v and gate/up fused)."""
        return {
            "wqkv": (self.q_size + 2 * self.kv_size, self.dim),
            "wo": (self.dim, self.q_size),
            "w13": (2 * self.intermediate_size, self.dim),
            "w2": (self.dim, self.intermediate_size),
        }

    def n_params(self) -> int:
        per_layer = sum(o * i for o, i in self.linear_shapes().values()) + 2 * self.dim
        per_layer += 2 * self.head_dim if self.qk_norm else 0
        embed = self.vocab_size * self.dim
        return self.n_layers * per_layer + embed * (1 if self.tie_word_embeddings else 2) + self.dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_hf_config(cls, cfg: dict) -> ModelArgs:
        """Build from a config.json dict (transformers 4.x `rope_theta`/`rope_scaling` or 5.x `rope_parameters`)."""
        family = cfg.get("model_type")
        if family not in FAMILIES:
            raise ValueError(f"model_type={family!r} is not supported: tuner runs {', '.join(FAMILIES)}")
        _check_fields(cfg)
        n_heads = cfg["num_attention_heads"]
        dim = cfg["hidden_size"]
        rope = dict(cfg.get("rope_parameters") or {})
        legacy = cfg.get("rope_scaling") or {}
        rope.update({k: v for k, v in legacy.items() if k not in rope})
        if "type" in rope and "rope_type" not in rope:
            rope["rope_type"] = rope.pop("type")
        theta = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", "default")
        if rope_type not in ("default", "llama3", "linear"):
            raise ValueError(f"rope_type={rope_type!r} is not supported: tuner runs 'default', 'llama3', 'linear'")
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
        attention_bias = bool(cfg.get("attention_bias", False))
        window = cfg.get("sliding_window")
        if family == "qwen2" and not cfg.get("use_sliding_window", False):
            window = None
        return cls(
            family=family,
            vocab_size=cfg["vocab_size"],
            dim=dim,
            n_layers=cfg["num_hidden_layers"],
            n_heads=n_heads,
            n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
            head_dim=cfg.get("head_dim") or dim // n_heads,
            intermediate_size=cfg["intermediate_size"],
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=theta,
            rope_scaling=rope if rope_type != "default" else None,
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qkv_bias=family == "qwen2" or attention_bias,
            o_bias=attention_bias,
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            qk_norm=family == "qwen3",
            sliding_window=window,
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_ids=eos_ids,
        )


_WHOLE = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_OPTIONAL_WHOLE = ("num_key_value_heads", "head_dim", "max_position_embeddings")
_POSITIVE = ("rms_norm_eps", "rope_theta")


def _check_fields(cfg: dict) -> None:
    """KeyError for a required field that is missing; ValueError naming a field whose value is wrong."""
    for key in (*_WHOLE, *_OPTIONAL_WHOLE):
        if key not in cfg or cfg[key] is None:
            if key in _WHOLE:
                raise KeyError(key)
            continue
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{key}={v!r} must be a whole number of at least 1")
    for key in _POSITIVE:
        v = cfg.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
            raise ValueError(f"{key}={v!r} must be a positive number")
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    if heads % kv:
        raise ValueError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}")


def _llama3_rope(factor: float) -> dict:
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}


def _cfg(model_type, vocab, dim, layers, heads, kv, inter, theta, eps, max_pos, tie, eos, bos=None, **extra) -> dict:
    return dict(model_type=model_type, vocab_size=vocab, hidden_size=dim, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=inter, rope_theta=theta,
                rms_norm_eps=eps, max_position_embeddings=max_pos, tie_word_embeddings=tie, eos_token_id=eos,
                bos_token_id=bos, **extra)


# Real models' shapes (their config.json values); weights are always dummy for presets.
PRESETS: dict[str, dict] = {
    "tiny": _cfg("llama", 512, 64, 2, 4, 2, 128, 10000.0, 1e-6, 4096, False, 2, 1),
    "smollm2-135m": _cfg("llama", 49152, 576, 30, 9, 3, 1536, 100000.0, 1e-5, 8192, True, 0, 0),
    "smollm2-360m": _cfg("llama", 49152, 960, 32, 15, 5, 2560, 100000.0, 1e-5, 8192, True, 0, 0),
    "qwen2.5-0.5b": _cfg("qwen2", 151936, 896, 24, 14, 2, 4864, 1000000.0, 1e-6, 32768, True, 151643, 151643),
    "qwen3-0.6b": _cfg("qwen3", 151936, 1024, 28, 16, 8, 3072, 1000000.0, 1e-6, 40960, True, 151645, 151643,
                       head_dim=128),
    "llama-3.2-1b": _cfg("llama", 128256, 2048, 16, 32, 8, 8192, 500000.0, 1e-5, 131072, True,
                         [128001, 128008, 128009], 128000, head_dim=64, rope_scaling=_llama3_rope(32.0)),
    "qwen2.5-7b": _cfg("qwen2", 152064, 3584, 28, 28, 4, 18944, 1000000.0, 1e-6, 32768, False, 151643, 151643),
    "qwen3-8b": _cfg("qwen3", 151936, 4096, 36, 32, 8, 12288, 1000000.0, 1e-6, 40960, False, 151645, 151643,
                     head_dim=128),
    "llama-3.1-8b": _cfg("llama", 128256, 4096, 32, 32, 8, 14336, 500000.0, 1e-5, 131072, False,
                         [128001, 128008, 128009], 128000, rope_scaling=_llama3_rope(8.0)),
    "mistral-7b": _cfg("mistral", 32768, 4096, 32, 32, 8, 14336, 1000000.0, 1e-5, 32768, False, 2, 1,
                       head_dim=128),
}

# The Hugging Face repositories whose config.json each preset copies (what an export serves).
HF_IDS: dict[str, str] = {
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M", "smollm2-360m": "HuggingFaceTB/SmolLM2-360M",
    "qwen2.5-0.5b": "Qwen/Qwen2.5-0.5B", "qwen3-0.6b": "Qwen/Qwen3-0.6B", "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B", "qwen3-8b": "Qwen/Qwen3-8B", "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "mistral-7b": "mistralai/Mistral-7B-v0.3",
}


def model_shapes(model: str) -> ModelArgs | None:
    """The shapes of a preset, a named real model or a checkpoint on this machine. None for a checkpoint that is not
    here (a config written on another machine: only building its Engine needs the checkpoint). ValueError for a
    name that is none of these."""
    path = Path(model).expanduser()
    if model in NAMED:
        try:
            named_file(model)
        except ValueError:
            return None
    elif model not in PRESETS and not path.exists() and ("/" in model or model.startswith(("~", "."))
                                                         or is_gguf(path)):
        return None
    return resolve_model(model)[0]


def resolve_model(model: str) -> tuple[ModelArgs, Path | None]:
    """A preset name, a named real model, a GGUF file or a checkpoint directory -> (its shapes, the checkpoint
    directory or GGUF file; None for presets)."""
    if model in PRESETS:
        return ModelArgs.from_hf_config(PRESETS[model]), None
    path = named_file(model) if model in NAMED else Path(model).expanduser()
    if is_gguf(path) and path.is_file():
        cfg, file = open_gguf(path).config, path
    elif not (path / "config.json").is_file():
        raise ValueError(
            f"model={model!r} is neither a preset ({', '.join(PRESETS)}), a named real model ({', '.join(NAMED)}), "
            "a .gguf file nor a directory holding config.json"
        )
    else:
        file = path / "config.json"
        try:
            cfg = json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(f"{file} is not readable JSON: {e}") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"{file} holds a {type(cfg).__name__}, not a JSON object of model settings")
    try:
        return ModelArgs.from_hf_config(cfg), path
    except KeyError as e:
        raise ValueError(f"{file} has no {e.args[0]!r}, which a {cfg.get('model_type')} model needs") from None
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise ValueError(f"{file}: {e}") from None
