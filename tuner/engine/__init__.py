"""The engine: prefill/decode loop, KV caches, quantization, sampling."""
