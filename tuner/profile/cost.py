"""Analytic cost model: FLOPs and bytes of every op of one forward pass, from shapes and dtypes alone.

LLM-Viewer-style counts (docs/architecture.md, "The cost model"). Bytes are the unique traffic the
op must move (each input read once, each output written once), so measured traffic is at least this.
These are estimates: the profiler divides them by measured time to get achieved rates.

Conventions: `rows` is the number of tokens an op processes; a linear (in -> out) over `rows` tokens does
2*rows*in*out FLOPs and moves its weights once plus its input and output activations. Attention over a
sequence with `new` query tokens after `past` cached ones attends to past + i + 1 keys for query i.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..models.args import ModelArgs

# The engine's ops, in the order a layer runs them. record_function ranges use these names.
OPS = ("embedding", "attn_norm", "qkv_proj", "qk_norm", "rope", "kv_write", "attention", "o_proj", "residual",
       "mlp_norm", "gate_up_proj", "act_mul", "down_proj", "final_norm", "lm_head", "sampling")
# Ranges of the cupy backend's fused decode step, and the ops each one does.
FUSED = {"add_norm": ("residual", "attn_norm", "mlp_norm", "final_norm"),
         "rope_kv_write": ("qk_norm", "rope", "kv_write"),
         # a CUDA-graph replay runs the whole decode step but sampling, one range with no ops inside it
         "cuda_graph": tuple(o for o in OPS if o != "sampling")}
MATMULS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head")

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}  # the model dtypes' activation bytes
KV_BYTES = {"int8": 1, "fp8": 1}
SCALE_BYTES = 2  # int8/int4 weight scales and zeros are stored in 16 bits (bf16 on CPU, the model dtype on GPU)


@dataclass(frozen=True)
class Precision:
    act_bytes: int  # bytes per activation element (model dtype: 4 fp32, 2 bf16/fp16)
    quant: str = "none"  # weight-only quantization of the decoder linears: none, int8, int4, fp8
    group_size: int = 128  # int4 group
    kv_dtype: str = "auto"  # KV-cache storage: auto (model dtype), int8, fp8

    @classmethod
    def of(cls, config: dict) -> Precision:
        """The precision of an engine configuration (EngineConfig.to_dict())."""
        return cls(DTYPE_BYTES[config["dtype"]], config["quant"], config["group_size"], config["kv_dtype"])

    @property
    def kv_bytes(self) -> int:
        return KV_BYTES.get(self.kv_dtype, self.act_bytes)

    @property
    def kv_scale_bytes(self) -> int:
        """fp32 scale per (token, head) of a quantized cache."""
        return 4 if self.kv_dtype in KV_BYTES else 0


def weight_bytes(out: int, inp: int, quant: str, group_size: int, act_bytes: int) -> float:
    """Bytes of a linear layer's weights as tuner stores them."""
    if quant == "none":
        return out * inp * act_bytes
    if quant == "int8":
        return out * inp + out * SCALE_BYTES
    if quant == "int4":
        return out * inp / 2 + 2 * out * (inp / group_size) * SCALE_BYTES
    if quant == "fp8":
        return out * inp + out * 4
    raise ValueError(f"quant={quant!r} is not allowed: use 'none', 'int8', 'int4' or 'fp8'")


def linear(rows: int, inp: int, out: int, p: Precision, quant: str | None = None, bias: bool = False):
    """(FLOPs, bytes) of rows x [inp -> out]."""
    quant = p.quant if quant is None else quant
    flops = 2 * rows * inp * out + (rows * out if bias else 0)
    nbytes = weight_bytes(out, inp, quant, p.group_size, p.act_bytes) + (rows * inp + rows * out) * p.act_bytes
    return flops, nbytes + (out * p.act_bytes if bias else 0)


def attention(args: ModelArgs, seqs: list[tuple[int, int]], p: Precision, from_cache: bool):
    """(FLOPs, bytes) of attention for sequences given as (new query tokens, past cached tokens).

    FLOPs: q.k and p.v (2 * head_dim each per query head and key pair) plus ~5 per score for the
    softmax. Bytes: q read and output written once; each sequence's K and V read once per KV head
    (grouped-query attention shares them across the query group), in the cache's dtype when read
    from the cache, else as activations.
    """
    H, Hkv, D = args.n_heads, args.n_kv_heads, args.head_dim
    kv_b = p.kv_bytes if from_cache else p.act_bytes
    scale_b = p.kv_scale_bytes if from_cache else 0
    flops = nbytes = 0.0
    for new, past in seqs:
        pairs = new * past + new * (new + 1) / 2  # (query, key) pairs under the causal mask
        keys = past + new
        flops += 4 * H * D * pairs + 5 * H * pairs
        nbytes += 2 * new * H * D * p.act_bytes + 2 * keys * Hkv * (D * kv_b + scale_b)
    return flops, nbytes


def step_costs(args: ModelArgs, p: Precision, seqs: list[tuple[int, int]], logits_rows: int, greedy: bool = True,
               from_cache: bool = False) -> dict[str, tuple[float, float]]:
    """(FLOPs, bytes) per op of one forward pass over all layers, for sequences (new tokens, past tokens).

    logits_rows: rows that reach the final norm, lm_head and sampling (one per sequence: prefill keeps
    only each prompt's last token). from_cache: attention reads K/V from the cache (decode) rather
    than from this step's activations (prefill).
    """
    L, Dm, H, Hkv, D, Im, V = (args.n_layers, args.dim, args.n_heads, args.n_kv_heads, args.head_dim,
                               args.intermediate_size, args.vocab_size)
    a = p.act_bytes
    rows = sum(new for new, _ in seqs)
    qkv_out = (H + 2 * Hkv) * D
    per_layer = {
        "attn_norm": (4 * rows * Dm, 2 * rows * Dm * a + Dm * a),
        "qkv_proj": linear(rows, Dm, qkv_out, p, bias=args.qkv_bias),
        "qk_norm": (4 * rows * (H + Hkv) * D, 2 * rows * (H + Hkv) * D * a + (H + Hkv) * D * a) if args.qk_norm
        else (0.0, 0.0),
        "rope": (3 * rows * (H + Hkv) * D, 2 * rows * (H + Hkv) * D * a + 2 * rows * D * a),
        "kv_write": ((3 * rows * 2 * Hkv * D if p.kv_dtype in KV_BYTES else 0),
                     rows * 2 * Hkv * (D * a + D * p.kv_bytes + p.kv_scale_bytes)),
        "attention": attention(args, seqs, p, from_cache),
        "o_proj": linear(rows, H * D, Dm, p, bias=args.o_bias),
        "residual": (2 * rows * Dm, 2 * 3 * rows * Dm * a),  # two adds per layer
        "mlp_norm": (4 * rows * Dm, 2 * rows * Dm * a + Dm * a),
        "gate_up_proj": linear(rows, Dm, 2 * Im, p, bias=args.mlp_bias),
        "act_mul": (5 * rows * Im, 3 * rows * Im * a),
        "down_proj": linear(rows, Im, Dm, p, bias=args.mlp_bias),
    }
    out = {op: (f * L, b * L) for op, (f, b) in per_layer.items()}
    head_quant = "int8" if p.quant in ("int8", "int4") else "none"
    out["embedding"] = (0.0, 2 * rows * Dm * a)
    out["final_norm"] = (4 * logits_rows * Dm, 2 * logits_rows * Dm * a + Dm * a)
    out["lm_head"] = linear(logits_rows, Dm, V, p, quant=head_quant)
    out["sampling"] = ((1 if greedy else 5) * logits_rows * V, 4 * logits_rows * V)
    return {op: out[op] for op in OPS}


def decode_step(args: ModelArgs, weight_bytes: float, kv_bytes_per_token: float, batch: int,
                context: int) -> tuple[float, float]:
    """(FLOPs, bytes) of one decode step as MBU and MFU count them: every weight read once (`weight_bytes` as
    stored) plus the cached K/V each sequence attends to (`context`: keys, summed over the batch); 2 FLOPs per
    weight per sequence plus q.k and p.v over the context."""
    L = args.n_layers
    per_token = 2 * sum(o * i for o, i in args.linear_shapes().values()) * L + 2 * args.dim * args.vocab_size
    return (batch * per_token + 4 * args.n_heads * args.head_dim * L * context,
            weight_bytes + context * kv_bytes_per_token)


def memory_bytes(args: ModelArgs, p: Precision, kv_tokens: int) -> dict[str, float]:
    """Bytes an engine holds before it runs: its weights as stored (norms, embedding, every layer's linears with
    their biases, the output projection: int8 with int8/int4 weights, one table when tied) and a KV cache of
    `kv_tokens` token slots. What generate() adds on top, the prefill's activations, is prefill_bytes."""
    a = p.act_bytes
    per_layer = sum(weight_bytes(o, i, p.quant, p.group_size, a) for o, i in args.linear_shapes().values())
    per_layer += 2 * args.dim * a + (2 * args.head_dim * a if args.qk_norm else 0)
    per_layer += ((args.q_size + 2 * args.kv_size) * a if args.qkv_bias else 0) + (args.dim * a if args.o_bias else 0)
    per_layer += (3 * args.intermediate_size + args.dim) * a if args.mlp_bias else 0
    head_quant = "int8" if p.quant in ("int8", "int4") else "none"
    head = weight_bytes(args.vocab_size, args.dim, head_quant, p.group_size, a)
    table = args.vocab_size * args.dim * a
    ends = (head if head_quant == "int8" else table) if args.tie_word_embeddings else table + head
    weights = args.n_layers * per_layer + ends + args.dim * a
    kv = kv_tokens * args.n_layers * 2 * args.n_kv_heads * (args.head_dim * p.kv_bytes + p.kv_scale_bytes)
    return {"weights": weights, "kv_cache": kv}


PREFILL_SLACK = 4  # measured: resident growth of a float32 prefill on CPU is ~4x the one-layer live set per token


def prefill_bytes(args: ModelArgs, p: Precision, batch: int, tokens: int) -> float:
    """Activation memory a prefill of `batch` prompts padded to `tokens` takes on top of the weights and KV cache:
    per token, one layer's live activations (the residual, its normed copy, q/k/v, and the MLP's gate/up and
    product) times PREFILL_SLACK, which covers the allocator's cached blocks and the attention's temporaries.
    Calibrated on a 2-core CPU with smollm2-135m: 100-120 KB per token measured, 107 KB estimated."""
    per_token = 2 * args.dim + args.q_size + 2 * args.kv_size + 3 * args.intermediate_size
    return batch * tokens * per_token * p.act_bytes * PREFILL_SLACK


def range_costs(costs: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """The costs per profiler range: every op, plus each fused range as the sum of the ops it does."""
    out = dict(costs)
    for name, ops in FUSED.items():
        out[name] = (sum(costs[o][0] for o in ops), sum(costs[o][1] for o in ops))
    return out
