"""CUDA graphs of the fixed-shape decode step: captured once per batch bucket and context band, replayed."""

from __future__ import annotations

import torch

from ..models.model import DecodeState
from ..ranges import op


def bucket(batch: int) -> int:
    """The CUDA-graph batch bucket serving `batch` sequences: the next power of two."""
    return 1 << (batch - 1).bit_length()


class CudaGraphs:
    """The fixed-shape decode step captured once per batch bucket (1, 2, 4, 8, ...) and context band
    (256, 512, 1024, ... tokens, up to max_seq_len), and replayed.

    A batch of B runs in the graph of bucket(B): rows past B decode a dummy token into a scratch cache
    slot. The band sizes the graph's attention split, so short contexts skip empty partitions.
    Inputs are copied into the graph's static buffers before each replay; the logits come back as a view
    of its static output, valid until the next replay.
    """

    def __init__(self, engine):
        self.engine, self.graphs, self.pool = engine, {}, None

    def band(self, max_len: int) -> int:
        return min(self.engine.config.max_seq_len, max(256, bucket(max_len)))

    def run(self, tokens: torch.Tensor, lens_t: torch.Tensor, tables: torch.Tensor, max_len: int) -> torch.Tensor:
        """Logits [B, V] of one decode step; max_len: the longest sequence once this token is in."""
        B = tokens.shape[0]
        key = (bucket(B), self.band(max_len))
        graph, st, logits = self.graphs.get(key) or self._capture(*key)
        if st.plan is not None:
            st.plan.check(max_len)
        st.tokens[:B].copy_(tokens)
        st.tokens[B:].zero_()
        st.positions[:B].copy_(lens_t)
        st.positions[B:].zero_()
        torch.add(st.positions, 1, out=st.seq_lens)
        st.tables[:B].copy_(tables[:, : st.tables.shape[1]])
        st.tables[B:].fill_(self.engine.cache.scratch)
        with op("cuda_graph"):  # the profiler sees the step as one range: its kernels were captured, not called
            graph.replay()
        return logits[:B]

    def _capture(self, Bp: int, band: int):
        e = self.engine
        a, cache = e.args, e.cache
        # the band's blocks only: the torch twins read every block of the table they are given
        width = min(cache.decode_tables(1).shape[1], -(-band // cache.block_len))
        dev = e.device
        st = DecodeState(tokens=torch.zeros(Bp, dtype=torch.long, device=dev),
                         positions=torch.zeros(Bp, dtype=torch.int32, device=dev),
                         seq_lens=torch.ones(Bp, dtype=torch.int32, device=dev),
                         tables=torch.full((Bp, width), cache.scratch, dtype=torch.int32, device=dev),
                         block_size=cache.block_len, cos=e.cos, sin=e.sin,
                         plan=e.ops.plan_attention(Bp, a.n_heads, a.n_kv_heads, a.head_dim, band, dev))
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm up: compile and load kernels, settle the allocator
            for _ in range(2):
                e.model.decode(st, cache, e.ops)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, stream=side):
            logits = e.model.decode(st, cache, e.ops)
        self.pool = graph.pool()
        self.graphs[Bp, band] = (graph, st, logits)
        return self.graphs[Bp, band]
