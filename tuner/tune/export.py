"""`tuner.export`: a chosen configuration as the file each server reads.

    tuner    tuner's own YAML (schema tuner.config/1; Engine.from_file rebuilds exactly this config)
    vllm     config.yaml for `vllm serve --config` (long flag names as keys)
    hf       generation_config.json through transformers' GenerationConfig (sampling only)
    tgi      a .env of text-generation-launcher variables (each flag's upper-case name)
    trtllm   an LLM-API YAML for `trtllm-serve --config` / `trtllm-bench --config`

Where a target has no equivalent of a tuner knob (a contiguous KV cache, an int8 KV cache, on-the-fly int4
weights), the file says so in a comment instead of guessing. Every file carries its provenance: the tuner
version, the hardware, the metrics that chose it and the date.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import CONFIG_SCHEMA, EngineConfig, SamplingParams
from ..knobs import ENGINE_KNOBS, SAMPLING_KNOBS, lookup

FORMATS = {"tuner": "tuner.yaml", "vllm": "vllm-config.yaml", "hf": "generation_config.json", "tgi": "tgi.env",
           "trtllm": "trtllm-llm-api.yaml"}
_HEADLINE = ("output_tok_s", "ttft_ms_p99", "tpot_ms_p99", "itl_ms_p99", "mbu", "usd_per_1m_output_tokens",
             "usd_per_1m_tokens", "top1_agreement", "kl_mean", "goodput_req_s", "slo_attainment", "request_throughput")


class Choice:
    """What an export writes: the engine and sampling configuration, and where they came from."""

    def __init__(self, engine: EngineConfig, sampling: SamplingParams, workload: dict | None = None,
                 metrics: dict | None = None, hardware: dict | None = None, chosen_by: str = "given",
                 measured_as: str = "given"):
        self.engine, self.sampling = engine, sampling
        self.workload, self.metrics, self.hardware = workload or {}, metrics or {}, hardware or {}
        self.chosen_by = chosen_by
        self.measured_as = measured_as  # "static batch", "serving" (timed arrivals) or "given" (not measured)

    @classmethod
    def of(cls, source, objective: str | None = None) -> Choice:
        from ..result import RunResult
        from ..serve.result import ServeResult
        from .result import SweepResult

        if isinstance(source, Choice):
            return source
        if isinstance(source, RunResult):
            sampling = {k: v for k, v in source.sampling.items() if k in SAMPLING_KNOBS}
            return cls(EngineConfig.from_dict(source.config), SamplingParams.from_dict(sampling), source.workload,
                       source.metrics, source.hardware, f"run {source.run_id}", "static batch")
        if isinstance(source, ServeResult):
            sampling = {k: v for k, v in source.sampling.items() if k in SAMPLING_KNOBS}
            t = source.traffic
            workload = {"kind": "serving", "rate": t.get("rate") or "inf", "num_prompts": t.get("num_prompts"),
                        "prompt_len": str(t.get("prompt_len")), "output_len": str(t.get("output_len"))}
            metrics = {k: v for k, v in source.metrics.items() if not isinstance(v, (list, dict))}
            return cls(EngineConfig.from_dict(source.config), SamplingParams.from_dict(sampling), workload, metrics,
                       source.hardware, f"serve-bench run {source.run_id}", "serving")
        if isinstance(source, SweepResult):
            t = source.best_trial(objective)
            engine, sampling = split_knobs(source.best_config(objective))
            w = source.workload
            sampling.setdefault("max_new_tokens", w.get("output_len", 128))
            key = objective or str(source.objectives[0])
            if source.serving:
                w = {"kind": "serving", **{k: v for k, v in source.serving["traffic"].items() if v is not None}}
            return cls(EngineConfig(**engine), SamplingParams(**sampling), w, t["metrics"], source.hardware,
                       f"sweep {source.study_name} trial {t['number']} (best {key})",
                       "serving" if source.serving else "static batch")
        if isinstance(source, EngineConfig):
            return cls(source, SamplingParams())
        if isinstance(source, dict):
            engine, sampling = split_knobs(source)
            return cls(EngineConfig(**engine), SamplingParams(**sampling))
        raise TypeError(f"cannot export a {type(source).__name__}: pass a RunResult, a SweepResult, an "
                        "EngineConfig or a dict of knobs")

    def provenance(self) -> dict[str, Any]:
        hw = {k: self.hardware[k] for k in ("name", "device", "bandwidth_gbs", "matmul_tflops", "price_per_hour")
              if k in self.hardware}
        metrics = {k: self.metrics[k] for k in _HEADLINE if self.metrics.get(k) is not None}
        return {"tuner_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "chosen_by": self.chosen_by, "hardware": hw, "metrics": metrics,
                "workload": {k: v for k, v in self.workload.items() if not isinstance(v, (list, dict))}}


def split_knobs(knobs: dict[str, Any]) -> tuple[dict, dict]:
    """Knobs in registry names (sampler's seed written sampling_seed) -> (engine knobs, sampling knobs)."""
    engine, sampling = {}, {}
    for k, v in knobs.items():
        found = lookup(k)
        if found is None or found[0] == "workload":
            raise ValueError(f"unknown knob {k!r}: knobs are {', '.join([*ENGINE_KNOBS, *SAMPLING_KNOBS])}")
        (engine if found[0] == "engine" else sampling)[found[1]] = v
    return engine, sampling


def export(source, format: str = "tuner", path: str | Path | None = None, objective: str | None = None) -> Path:
    """Write `source` (a RunResult, a ServeResult, a SweepResult's best trial, an EngineConfig or a dict of knobs)
    in `format` to `path` (a file, or a directory that gets FORMATS[format]; hf writes generation_config.json into
    a directory). Returns the path written."""
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not allowed: use one of {', '.join(FORMATS)}")
    choice = Choice.of(source, objective)
    as_dir = str(path).endswith(("/", "\\")) if path is not None else False  # "out/" names a folder
    path = Path(path or FORMATS[format])
    if format == "hf":
        directory = path if path.suffix != ".json" else path.parent
        if path.suffix == ".json" and path.name != "generation_config.json":
            raise ValueError("format='hf' writes generation_config.json: give a directory or that file name")
        return _hf(choice, directory)
    if path.is_dir() or as_dir:
        path = path / FORMATS[format]
    path.parent.mkdir(parents=True, exist_ok=True)
    text = {"tuner": _tuner, "vllm": _vllm, "tgi": _tgi, "trtllm": _trtllm}[format](choice)
    path.write_text(text)
    return path


def export_all(source, directory: str | Path, objective: str | None = None) -> dict[str, Path]:
    directory = Path(directory)
    return {f: export(source, f, directory if f == "hf" else directory / FORMATS[f], objective) for f in FORMATS}


def export_formats(source, format: str, path: str | Path | None = None,
                   objective: str | None = None) -> dict[str, Path]:
    """What `tuner export` and `%tuner export` write: one format (FORMATS) or "all" of them; {format: path}."""
    if format == "all":
        return export_all(source, path or Path("."), objective)
    return {format: export(source, format, path, objective)}


def load_record(path: str | Path):
    """The RunResult (tuner.run/1), ServeResult (tuner.serve/1) or SweepResult (tuner.sweep/1) saved at `path`,
    from any machine."""
    from ..result import SCHEMA as RUN
    from ..result import RunResult
    from ..serve.result import SCHEMA as SERVE
    from ..serve.result import ServeResult
    from .result import SCHEMA as SWEEP
    from .result import SweepResult

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:  # JSON and UTF-8 errors are ValueErrors
        raise ValueError(f"{path} is not a readable JSON record: {str(e)[:200]}") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema == SWEEP:
        return SweepResult.from_dict(data)
    if schema == RUN:
        return RunResult.from_dict(data)
    if schema == SERVE:
        return ServeResult.from_dict(data)
    raise ValueError(f"{path} is neither a run record ({RUN}), a serve record ({SERVE}) nor a sweep record ({SWEEP})")


# -- formats -----------------------------------------------------------------------------------------


def _yaml(data: dict) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=100)


def _inline(text) -> str:
    """`text` with every character that could end or bend a line (newline, carriage return, other controls and
    Unicode separators) escaped: a record's values never start a line of their own in an exported file."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def _comments(lines) -> str:
    return "".join(f"# {_inline(line)}\n" for line in lines)


def _comment_block(choice: Choice, title: str) -> str:
    p = choice.provenance()
    lines = [title, f"written by tuner {p['tuner_version']} on {p['created']}; chosen by {p['chosen_by']}"]
    if p["hardware"]:
        lines.append("measured on: " + ", ".join(f"{k}={v}" for k, v in p["hardware"].items()))
    if p["metrics"]:
        lines.append("its metrics: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                for k, v in p["metrics"].items()))
    cost = p["metrics"].get("usd_per_1m_output_tokens")
    if cost is not None:
        lines.append(f"expected cost: ${cost:.4g} per 1M output tokens at ${p['hardware'].get('price_per_hour')}/h "
                     "(this workload's measured throughput)")
    if p["workload"]:
        lines.append("workload: " + ", ".join(f"{k}={v}" for k, v in p["workload"].items()))
    return _comments(lines)


def _env_line(key: str, value) -> str:
    text = str(value)
    if not all(c.isprintable() for c in text):
        raise ValueError(f"{key}={_inline(text)[:120]} cannot go into a .env file: it holds a line break or another "
                         "control character")
    return f"{key}={text}\n"


def _tuner(choice: Choice) -> str:
    data = {"schema": CONFIG_SCHEMA, "engine": choice.engine.to_dict(), "sampling": choice.sampling.to_dict(),
            "provenance": choice.provenance()}
    return _comment_block(choice, "tuner configuration: tuner.Engine.from_file(path) rebuilds it") + _yaml(data)


def _model_id(cfg: EngineConfig) -> tuple[str, str | None]:
    from ..models.args import HF_IDS, PRESETS
    from ..models.gguf import NAMED_HF_IDS

    if cfg.model in PRESETS:
        if cfg.model in HF_IDS:
            return HF_IDS[cfg.model], f"tuner measured {cfg.model}'s shapes with dummy weights; this is its checkpoint"
        return "<your-model>", f"the preset {cfg.model!r} is no published model: set model"
    if cfg.model in NAMED_HF_IDS:
        return NAMED_HF_IDS[cfg.model], (f"tuner measured the GGUF file of {cfg.model} (its weights as Q4_1, "
                                         "dequantized); this is the checkpoint it was converted from")
    return str(Path(cfg.model).expanduser().resolve()), None


def _sampling_overrides(s: SamplingParams) -> dict:
    return {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "min_p": s.min_p,
            "repetition_penalty": s.repetition_penalty}


def _server_notes(choice: Choice) -> list[str]:
    """What a GPU server should know about how the choice was measured."""
    e, notes = choice.engine, []
    if choice.measured_as == "static batch":
        notes.append(f"batch_size={e.batch_size} was measured as a static batch (every request at once, a new "
                     "batch when the last finished); as the cap on running sequences under traffic it is untested: "
                     "measure it with tuner serve-bench")
    if e.dtype == "float32":
        notes.append("dtype=float32: measured in float32 (a CPU run, most likely); GPU servers serve bfloat16 or "
                     "float16, which halves the weight bytes each decode step reads: set dtype")
    return notes


def _vllm(choice: Choice) -> str:
    e, s = choice.engine, choice.sampling
    model, why = _model_id(e)
    notes = [f"model: {why}"] if why else []
    notes += _server_notes(choice)
    d: dict[str, Any] = {"model": model, "dtype": e.dtype, "max-model-len": e.max_seq_len,
                         "max-num-seqs": e.batch_size}
    d["max-num-batched-tokens"] = _token_budget(choice)
    d["enable-chunked-prefill"] = e.enable_chunked_prefill
    d["enable-prefix-caching"] = e.enable_prefix_caching
    if e.kv_cache == "paged":
        d["block-size"] = e.block_size
        if e.block_size % 16:
            notes.append(f"block-size {e.block_size}: vLLM's FlashAttention backend takes multiples of 16 only; "
                         "use 16, or another attention backend")
    else:
        notes.append("kv_cache=contiguous: vLLM's KV cache is always paged; block-size left at vLLM's default 16")
    if e.kv_dtype == "fp8":
        d["kv-cache-dtype"] = "fp8"
    else:
        d["kv-cache-dtype"] = "auto"
        if e.kv_dtype == "int8":
            notes.append("kv_dtype=int8: vLLM has no int8 KV cache; kept 'auto' (fp8 is the nearest)")
    if e.quant == "fp8":
        d["quantization"] = "fp8"
    elif e.quant in ("int8", "int4"):
        kind = f"GPTQ/AWQ 4-bit (group {e.group_size})" if e.quant == "int4" else "W8A16 (compressed-tensors)"
        notes.append(f"quant={e.quant}: vLLM does not quantize to {e.quant} weight-only on load; serve a "
                     f"pre-quantized {kind} checkpoint as model")
    d["enforce-eager"] = not e.cuda_graphs
    d["seed"] = s.seed
    d["generation-config"] = "vllm"  # the sampling below, not the checkpoint's generation_config.json
    d["override-generation-config"] = json.dumps(_sampling_overrides(s))
    if e.backend == "cupy":
        notes.append("backend=cupy: tuner's own kernels; vLLM picks its attention backend itself")
    head = _comment_block(choice, "vLLM server configuration: vllm serve --config vllm-config.yaml")
    return head + _comments(f"note: {n}" for n in notes) + _yaml(d)


def _token_budget(choice: Choice) -> int:
    """The tokens one step may compute: the measured budget, or enough for a batch of the workload's prompts."""
    e = choice.engine
    if e.max_num_batched_tokens:
        return e.max_num_batched_tokens
    prompt = choice.workload.get("prompt_len") or choice.workload.get("prompt_len_mean")
    return max(int(e.batch_size * prompt), 2048) if isinstance(prompt, (int, float)) else 8192


def _hf(choice: Choice, directory: Path) -> Path:
    from transformers import GenerationConfig

    s, e = choice.sampling, choice.engine
    greedy = s.temperature == 0
    kw: dict[str, Any] = dict(do_sample=not greedy, repetition_penalty=s.repetition_penalty,
                              cache_implementation="static" if e.kv_cache == "contiguous" else "dynamic")
    # an output length a benchmark forced is no reply length: vLLM's default --generation-config auto would read
    # max_new_tokens as a cap on every reply of the server
    forced = choice.workload.get("kind") in ("synthetic", "serving") or "output_len" in choice.workload
    if not forced:
        kw["max_new_tokens"] = s.max_new_tokens
    if not greedy:
        kw.update(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
        if s.min_p:
            kw["min_p"] = s.min_p
    if s.stop_token_ids:
        kw["eos_token_id"] = list(s.stop_token_ids)
    cfg = GenerationConfig(**kw)
    cfg.tuner_provenance = choice.provenance()  # kept in the JSON beside the transformers fields
    if forced:
        cfg.tuner_provenance["note"] = (f"max_new_tokens left out: the benchmark forced every output to "
                                        f"{s.max_new_tokens} tokens, which says nothing of the replies you want")
    directory.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(str(directory))
    return directory / "generation_config.json"


def _tgi(choice: Choice) -> str:
    e = choice.engine
    model, why = _model_id(e)
    notes = [f"MODEL_ID: {why}"] if why else []
    notes += _server_notes(choice)
    env: dict[str, Any] = {"MODEL_ID": model, "MAX_BATCH_SIZE": e.batch_size, "MAX_TOTAL_TOKENS": e.max_seq_len,
                           "MAX_CONCURRENT_REQUESTS": max(128, e.batch_size)}
    out_len = choice.sampling.max_new_tokens
    env["MAX_INPUT_TOKENS"] = max(1, e.max_seq_len - out_len)
    env["MAX_BATCH_PREFILL_TOKENS"] = _token_budget(choice)
    if e.kv_cache == "paged" and e.num_blocks:
        env["MAX_BATCH_TOTAL_TOKENS"] = e.num_blocks * e.block_size  # the KV pool tuner measured
    env["PREFIX_CACHING"] = int(e.enable_prefix_caching)
    # graph sizes up to the first power of two at or above the batch: a running batch always finds one
    env["CUDA_GRAPHS"] = ",".join(str(1 << i) for i in range((e.batch_size - 1).bit_length() + 1)) \
        if e.cuda_graphs else "0"
    if e.quant == "fp8":
        env["QUANTIZE"] = "fp8"
    elif e.quant == "int8":
        env["QUANTIZE"] = "eetq"  # int8 weight-only, quantized on load
    elif e.quant == "int4":
        notes.append(f"quant=int4 (group {e.group_size}): serve a GPTQ/AWQ 4-bit checkpoint and set QUANTIZE=gptq or "
                     "awq (TGI reads the format from it)")
    if "QUANTIZE" not in env:  # TGI refuses DTYPE together with QUANTIZE
        if e.dtype in ("float16", "bfloat16"):
            env["DTYPE"] = e.dtype
        else:
            notes.append(f"dtype={e.dtype}: TGI serves float16 or bfloat16")
    if e.kv_dtype == "fp8":
        env["KV_CACHE_DTYPE"] = "fp8_e4m3fn"
    elif e.kv_dtype == "int8":
        notes.append("kv_dtype=int8: TGI has no int8 KV cache (fp8_e4m3fn is the nearest)")
    if e.kv_cache == "contiguous":
        notes.append("kv_cache=contiguous: TGI's KV cache is paged")
    notes.append("sampling is per request in TGI: send the parameters of generation_config.json with each request")
    head = _comment_block(choice, "text-generation-launcher settings: docker run --env-file tgi.env ...")
    return head + _comments(f"note: {n}" for n in notes) + "".join(_env_line(k, v) for k, v in env.items())


def _trtllm(choice: Choice) -> str:
    e = choice.engine
    model, why = _model_id(e)
    notes = [f"serve {model} ({why})" if why else f"serve {model}"] + _server_notes(choice)
    # (the PyTorch backend is trtllm-serve's default: its deprecated `backend` key is not written)
    d: dict[str, Any] = {"dtype": e.dtype, "max_batch_size": e.batch_size, "max_seq_len": e.max_seq_len,
                         "max_num_tokens": _token_budget(choice), "enable_chunked_prefill": e.enable_chunked_prefill}
    kv: dict[str, Any] = {"enable_block_reuse": e.enable_prefix_caching}
    if e.kv_cache == "paged":
        kv["tokens_per_block"] = e.block_size
    if e.kv_dtype == "fp8":
        kv["dtype"] = "fp8"
    elif e.kv_dtype == "int8":
        notes.append("kv_dtype=int8: quantize the checkpoint's KV cache with ModelOpt (int8 KV) or use dtype: fp8")
    d["kv_cache_config"] = kv
    d["cuda_graph_config"] = {"enable_padding": True, "max_batch_size": e.batch_size} if e.cuda_graphs else None
    if e.quant in ("int8", "int4", "fp8"):
        q = {"int8": "W8A16 (int8 weight-only)", "int4": f"W4A16 AWQ/GPTQ, group {e.group_size}", "fp8": "FP8"}[e.quant]
        notes.append(f"quant={e.quant}: quantize the checkpoint with NVIDIA ModelOpt as {q} and serve that")
    if e.kv_cache == "contiguous":
        notes.append("kv_cache=contiguous: TensorRT-LLM's PyTorch backend pages its KV cache")
    head = _comment_block(choice, "TensorRT-LLM LLM-API options: trtllm-serve MODEL --config trtllm-llm-api.yaml")
    return head + _comments(f"note: {n}" for n in notes) + _yaml(d)
