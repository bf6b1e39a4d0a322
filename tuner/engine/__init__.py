"""The engine: built on this machine (machine checks), its step functions and decode loop, per-sequence state,
run statistics, KV caches, sampling, CUDA graphs, synthetic workloads."""
