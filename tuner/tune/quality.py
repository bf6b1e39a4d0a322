"""Quality: what a configuration costs in output quality, against the float32 reference with the same weights.

On real English text, both the candidate and the reference (quant="none", kv_dtype="auto", float32, torch) are
run by teacher forcing through the KV cache (`Engine.score`): a short prefix is prefilled and every later token is
fed by a decode step that reads the cache, so weight quantization, the model dtype, the KV-cache dtype and the
decode kernels are all priced. Per position, as llama.cpp's `--kl-divergence` reports them:

- `kl_mean`, `kl_p99`: KL(reference || candidate) of the next-token distributions, in nats;
- `top1_agreement`: the share of positions whose most likely token is the reference's;
- `perplexity`: exp of the mean negative log-likelihood of the text's true next tokens (lower is better);
- `greedy_match`: how much of a greedy continuation stays identical to the reference's, on average (the common
  prefix's length over the continuation's length).

The text is the documentation strings of Python's standard library, read at run time (`reference_text`): real
prose every machine has, with no download. `text=` takes a file of one's own. With dummy weights the figures
compare random models and mean nothing about a real one (`Quality.dummy` says so).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import re
import time
import warnings
from pathlib import Path

import torch

# Standard-library modules whose documentation strings make the default text (read in this order).
STDLIB_MODULES = ("argparse", "collections", "json", "logging", "pathlib", "subprocess", "unittest", "textwrap",
                  "functools", "itertools", "email.message", "http.client", "urllib.request", "csv", "sqlite3",
                  "threading", "asyncio.events", "datetime", "decimal", "string", "typing", "zipfile", "tarfile",
                  "shutil", "pickle", "random", "statistics", "contextlib", "dataclasses", "enum", "fractions")


def reference_text() -> str:
    """English prose from the standard library's documentation strings (modules, their classes and functions),
    paragraphs of sentences only: no doctest lines, tables or code."""
    paragraphs: list[str] = []
    seen: set[str] = set()
    for name in STDLIB_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a Python built without it (sqlite3, ...)
            continue
        docs = [inspect.getdoc(module)]
        for attr in sorted(vars(module)):
            obj = vars(module)[attr]
            if not attr.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj)) and \
                    getattr(obj, "__module__", None) == module.__name__:
                with warnings.catch_warnings():  # typing's deprecated io / re namespaces warn when read
                    warnings.simplefilter("ignore", DeprecationWarning)
                    docs.append(inspect.getdoc(obj))
        for doc in docs:
            for para in re.split(r"\n\s*\n", doc or ""):
                text = " ".join(para.split())
                if _prose(text) and text not in seen:
                    seen.add(text)
                    paragraphs.append(text)
    return "\n\n".join(paragraphs)


def _prose(text: str) -> bool:
    """A paragraph of sentences: long enough, mostly letters and spaces, ending a sentence, not code."""
    if len(text) < 80 or not text.endswith((".", ":")) or ">>>" in text or "::" in text:
        return False
    letters = sum(c.isalpha() or c == " " for c in text)
    return letters / len(text) > 0.85 and text[0].isupper()


def read_text(text: str | Path | None) -> str:
    """The text quality is measured on: a file's contents, or the standard library's prose (None)."""
    if text is None:
        return reference_text()
    path = Path(text).expanduser()
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"quality text {path} cannot be read as UTF-8 text: {e}") from None
    if len(content.split()) < 200:
        raise ValueError(f"quality text {path} has {len(content.split())} words: give at least 200")
    return content


class Quality:
    """quality(engine) -> the metrics above for `engine`'s configuration. The reference is built once per model."""

    def __init__(self, n_seqs: int = 4, seq_len: int = 128, prefix: int = 16, greedy_tokens: int = 32,
                 text: str | Path | None = None):
        if n_seqs < 1 or seq_len < prefix + 2 or prefix < 1 or greedy_tokens < 1:
            raise ValueError("quality needs n_seqs >= 1, prefix >= 1, seq_len >= prefix + 2 and greedy_tokens >= 1")
        self.n, self.len, self.prefix, self.greedy = n_seqs, seq_len, prefix, greedy_tokens
        self.text_source = text
        self._ref: dict[tuple, dict] = {}
        self.dummy = False
        self.info: dict = {}

    def reference_config(self, cfg) -> dict:
        """The float32 model on the candidate's CPU backend where it has one (so a float candidate there drifts
        by nothing, and a quantized one by its quantization alone), else on the torch backend."""
        knobs = cfg.to_dict()
        backend = "cpu" if cfg.backend == "cpu" else "torch"
        knobs.update(quant="none", kv_dtype="auto", backend=backend, cuda_graphs=False, dtype="float32",
                     kv_cache="contiguous", num_blocks=0, **self._shape())
        return knobs

    def _shape(self) -> dict:
        return {"batch_size": self.n, "max_seq_len": max(self.len, self.prefix + self.greedy, 16)}

    def _rows(self, engine) -> list[list[int]]:
        """n_seqs consecutive windows of seq_len tokens of the text (seeded random ids without a tokenizer)."""
        if engine.tokenizer is None:
            from ..engine.workload import Workload

            return Workload(batch=self.n, prompt_len=self.len, seed=1234).prompts(engine.args.vocab_size, self.n)
        text = read_text(self.text_source)
        ids = list(engine.tokenizer(text)["input_ids"])
        if len(ids) < self.n * self.len:
            raise ValueError(f"the quality text has {len(ids)} tokens; n_seqs={self.n} x seq_len={self.len} need "
                             f"{self.n * self.len}")
        self.info = {"text": str(self.text_source or "python standard library docstrings"),
                     "text_sha256": hashlib.sha256(text.encode()).hexdigest()[:16], "text_tokens": len(ids),
                     "positions": self.n * (self.len - self.prefix)}
        return [ids[i * self.len:(i + 1) * self.len] for i in range(self.n)]

    def _reference(self, engine) -> dict:
        from ..engine.engine import Engine

        knobs = self.reference_config(engine.config)
        key = tuple(sorted((k, str(v)) for k, v in knobs.items() if k != "cuda_graphs"))
        if key not in self._ref:
            ref = Engine(**knobs)
            rows = self._rows(ref)
            logp = torch.log_softmax(ref.score(rows, self.prefix), dim=-1)
            self._ref[key] = {"rows": rows, "logp": logp, "greedy": self._greedy(ref, rows)}
            del ref
        return self._ref[key]

    def _greedy(self, engine, rows) -> list[list[int]]:
        from ..config import SamplingParams

        prompts = [r[: self.prefix] for r in rows]
        res = engine.generate(prompts, SamplingParams(max_new_tokens=self.greedy, ignore_eos=True))
        return res.tokens

    def __call__(self, engine) -> dict[str, float]:
        from ..models.args import resolve_model

        self.dummy = self.dummy or engine.config.weights == "dummy" or resolve_model(engine.config.model)[1] is None
        ref = self._reference(engine)
        cand = engine.replace(**self._shape(), num_blocks=0)  # the same weights, a cache sized for the text
        logp = torch.log_softmax(cand.score(ref["rows"], self.prefix), dim=-1)
        return {**compare(ref["logp"], logp, ref["rows"], self.prefix),
                "greedy_match": greedy_match(ref["greedy"], self._greedy(cand, ref["rows"]))}

    def release(self) -> None:
        self._ref.clear()


def compare(ref_logp: torch.Tensor, logp: torch.Tensor, rows: list[list[int]], prefix: int) -> dict[str, float]:
    """The per-position figures of log-probabilities [B, P, V] (P = T - prefix) against the reference's."""
    ref64, cand64 = ref_logp.double(), logp.double()
    kl = (ref64.exp() * (ref64 - cand64)).sum(-1).clamp_min(0).flatten()
    top1 = (ref_logp.argmax(-1) == logp.argmax(-1)).double().mean().item()
    target = torch.tensor([r[prefix:] for r in rows], dtype=torch.long)  # the true next tokens
    nll = -cand64.gather(-1, target[..., None])[..., 0]
    return {"kl_mean": kl.mean().item(), "kl_p99": torch.quantile(kl, 0.99).item(), "top1_agreement": top1,
            "perplexity": math.exp(nll.mean().item())}


def greedy_match(ref: list[list[int]], got: list[list[int]]) -> float:
    """Mean share of each greedy continuation that equals the reference's before the first difference."""
    shares = []
    for a, b in zip(ref, got, strict=True):
        same = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        shares.append(same / max(len(a), 1))
    return sum(shares) / len(shares)


def quality_table(model: str, variants: list[dict], base: dict | None = None, n_seqs: int = 4, seq_len: int = 128,
                  text: str | Path | None = None, progress=None) -> list[dict]:
    """The quality figures of each variant (knobs over `base`) of `model`: one row per variant, its knobs and
    metrics. What `tuner quality` prints. Variants that differ only in runtime knobs share loaded weights."""
    from ..engine.engine import Engine

    quality = Quality(n_seqs, seq_len, text=text)
    rows, loaded = [], None
    for i, knobs in enumerate(variants):
        cfg = {"model": model, **(base or {}), **knobs}
        engine = loaded.replace(**cfg) if loaded is not None else Engine(**cfg)
        loaded = engine
        t0 = time.perf_counter()
        rows.append({"knobs": knobs, **quality(engine), "seconds": round(time.perf_counter() - t0, 1)})
        if progress:
            progress(i + 1, len(variants), rows[-1])
    quality.release()
    return [{**r, **quality.info, "dummy": quality.dummy} for r in rows]


def variants(model: str, quants, kv_dtypes, groups=None) -> list[dict]:
    """Every quant x kv_dtype (int4 once per group), from lists or comma-separated strings, each value checked
    against its knob. groups default to those of 32, 64 and 128 that divide the model's widths."""
    from ..config import int4_groups
    from ..knobs import ENGINE_KNOBS
    from ..models.args import model_shapes

    def values(name, given):
        items = given.split(",") if isinstance(given, str) else list(given)
        return [ENGINE_KNOBS[name].parse(v) if isinstance(v, str) else ENGINE_KNOBS[name].check(v) for v in items]

    quants, kvs = values("quant", quants), values("kv_dtype", kv_dtypes)
    if groups is None:
        args = model_shapes(model)
        groups = [g for g in (int4_groups(args) if args else [128]) if g <= 128] or [128]
    groups = values("group_size", groups)
    out = []
    for q in quants:
        for kv in kvs:
            out += [{"quant": q, "group_size": g, "kv_dtype": kv} for g in groups] if q == "int4" else \
                [{"quant": q, "kv_dtype": kv}]
    return out


def table(rows: list[dict]) -> str:
    """The rows of quality_table as aligned text."""
    head = f"{'quant':<10}{'kv_dtype':<10}{'kl_mean':>10}{'kl_p99':>10}{'top1':>8}{'ppl':>9}{'greedy':>8}"
    lines = [head]
    for r in rows:
        k = r["knobs"]
        q = k["quant"] + (f" g{k['group_size']}" if k["quant"] == "int4" else "")
        lines.append(f"{q:<10}{k['kv_dtype']:<10}{r['kl_mean']:>10.5f}{r['kl_p99']:>10.4f}"
                     f"{r['top1_agreement']:>8.1%}{r['perplexity']:>9.2f}{r['greedy_match']:>8.1%}")
    return "\n".join(lines)
