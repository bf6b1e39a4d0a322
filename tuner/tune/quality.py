"""Output drift of a candidate configuration against the unquantized model with the same weights.

On fixed prompts, the next-token distributions at every position (one causal forward pass) of the
candidate and of the reference (quant="none", and float32 on CPU) are compared: the mean KL divergence
KL(reference || candidate) in nats and the share of positions whose most likely token agrees. This
prices weight quantization and a lower model dtype; the KV-cache dtype is not exercised (the pass reads
no cache). With dummy weights the figures compare random models and mean nothing about a real one.
"""

from __future__ import annotations

import torch

from ..engine.workload import Workload


class Drift:
    def __init__(self, n_prompts: int = 4, prompt_len: int = 64, seed: int = 1234):
        if n_prompts < 1:
            raise ValueError("quality_prompts must be >= 1")
        self.n, self.len, self.seed = n_prompts, max(2, min(prompt_len, 64)), seed
        self._ref: dict[tuple, tuple[list[list[int]], torch.Tensor]] = {}
        self.dummy = False

    def reference_config(self, cfg) -> dict:
        knobs = cfg.to_dict()
        knobs.update(quant="none", kv_dtype="auto", backend="torch", cuda_graphs=False, batch_size=self.n,
                     kv_cache="contiguous", max_seq_len=max(self.len + 1, 16))
        if cfg.device == "cpu":
            knobs["dtype"] = "float32"
        return knobs

    def _reference(self, engine) -> tuple[list[list[int]], torch.Tensor]:
        from ..engine.engine import Engine

        ref_knobs = self.reference_config(engine.config)
        key = tuple(sorted((k, str(v)) for k, v in ref_knobs.items()))
        if key not in self._ref:
            prompts = Workload(batch=self.n, prompt_len=self.len, seed=self.seed).prompts(engine.args.vocab_size,
                                                                                        self.n)
            ref = Engine(**ref_knobs)
            self._ref[key] = (prompts, torch.log_softmax(ref.logits(prompts).double(), dim=-1).cpu())
            del ref
        return self._ref[key]

    def __call__(self, engine) -> dict[str, float]:
        from ..models.args import resolve_model

        self.dummy = self.dummy or engine.config.weights == "dummy" or resolve_model(engine.config.model)[1] is None
        prompts, ref_logp = self._reference(engine)
        logp = torch.log_softmax(engine.logits(prompts).double(), dim=-1).cpu()
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean().item()
        top1 = (ref_logp.argmax(-1) == logp.argmax(-1)).float().mean().item()
        return {"kl_divergence": max(kl, 0.0), "top1_agreement": top1}

    def release(self) -> None:
        self._ref.clear()
