"""KV caches: contiguous (one slab per sequence) and paged (a pool of fixed-size blocks + block tables).

Both store K and V as [layers, X, Hkv, Y, head_dim] and address a token by two indices (i0, i1):
contiguous X = batch slot, Y = position; paged X = block id, Y = offset in the block. Optional
int8 / fp8 storage keeps one fp32 scale per (token, head). Both backends use a cache only through
tuner.backends.KVStore: its storage tensors, `write` and `gather`.
"""

from __future__ import annotations

import torch

from ..models.args import ModelArgs

_QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}


class KVCacheFullError(RuntimeError):
    """The paged KV pool has no free block left for the tokens a batch needs."""


class KVCache:
    """Contiguous cache: sequence b's token at position p lives at [b, :, p]."""

    def __init__(self, args: ModelArgs, batch_size: int, max_seq_len: int, dtype: torch.dtype,
                 kv_dtype: str, device: torch.device, rows: int | None = None, row_len: int | None = None):
        self.dtype, self.max_seq_len, self.batch_size = dtype, max_seq_len, batch_size
        self.store = {"auto": dtype, "int8": torch.int8, "fp8": torch.float8_e4m3fn}[kv_dtype]
        rows, row_len = rows or batch_size, row_len or max_seq_len
        shape = (args.n_layers, rows, args.n_kv_heads, row_len, args.head_dim)
        self.k = torch.zeros(shape, dtype=self.store, device=device)
        self.v = torch.zeros(shape, dtype=self.store, device=device)
        self.scratch = rows - 1  # the last row: where CUDA-graph padding rows write (allocated only for graphs)
        self.k_scale = self.v_scale = None
        if self.quantized:
            self.k_scale = torch.zeros(shape[:-1], dtype=torch.float32, device=device)
            self.v_scale = torch.zeros(shape[:-1], dtype=torch.float32, device=device)
        self.bytes_per_token = args.n_layers * 2 * args.n_kv_heads * (
            args.head_dim * self.k.element_size() + (4 if self.quantized else 0))

    @property
    def quantized(self) -> bool:
        return self.store in _QMAX

    @property
    def block_len(self) -> int:
        """Tokens per addressable block: the whole row of a contiguous cache."""
        return self.k.shape[3]

    def decode_tables(self, rows: int | torch.Tensor) -> torch.Tensor:
        """int32 [B, blocks] block ids of each sequence, as the fixed-shape decode step reads them; `rows`: the
        cache rows (slots) of the B sequences, or B for rows 0..B-1."""
        return _rows(rows, self.k.device).to(torch.int32)[:, None]

    @property
    def nbytes(self) -> int:
        scales = 2 * self.k_scale.numel() * 4 if self.quantized else 0
        return 2 * self.k.numel() * self.k.element_size() + scales

    def reset(self) -> None:
        """Forget all sequences (a new static batch starts)."""

    def reserve(self, seq_lens: list[int]) -> None:
        """Make room for sequence b to hold seq_lens[b] tokens."""
        if max(seq_lens) > self.max_seq_len:
            raise KVCacheFullError(f"a sequence needs {max(seq_lens)} tokens but max_seq_len={self.max_seq_len}")

    # -- one sequence at a time, as the scheduler admits and retires them (engine/scheduler.py) ---------------

    def blocks_to_grow(self, row: int, n_tokens: int) -> int:
        """Blocks row `row` must take to hold n_tokens (a contiguous row holds max_seq_len: none)."""
        return 0

    @property
    def free_blocks(self) -> int:
        return 1 << 62

    def grow(self, row: int, n_tokens: int) -> None:
        """Make room for row `row` to hold n_tokens."""
        if n_tokens > self.max_seq_len:
            raise KVCacheFullError(f"a sequence needs {n_tokens} tokens but max_seq_len={self.max_seq_len}")

    def free_row(self, row: int) -> None:
        """Row `row`'s sequence has left: its blocks go back to the pool."""

    def slots(self, b: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return b, pos

    def read_len(self, length: int) -> int:
        """How many key positions `read` returns for a batch whose longest sequence has `length` tokens."""
        return length

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, slots: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Store k, v [N, Hkv, D] of N tokens at `slots` (from `slots()`)."""
        i0, i1 = slots
        if self.quantized:
            k, ks = self._quantize(k)
            v, vs = self._quantize(v)
            self.k_scale[layer][i0, :, i1] = ks
            self.v_scale[layer][i0, :, i1] = vs
        self.k[layer][i0, :, i1] = k
        self.v[layer][i0, :, i1] = v

    def read(self, layer: int, rows: int | torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V [B, Hkv, read_len(length), D] in the model dtype of rows 0..B-1 (rows an int: views where the
        cache is not quantized) or of the cache rows `rows` [B]."""
        index = _index(rows)
        k, v = self.k[layer, index, :, :length], self.v[layer, index, :, :length]
        if self.quantized:
            k = self._dequantize(k, self.k_scale[layer, index, :, :length])
            v = self._dequantize(v, self.v_scale[layer, index, :, :length])
        return k, v

    def gather(self, layer: int, tables: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K, V [B, Hkv, n * block_len, D] in the model dtype: every block of tables [B, n], in table order."""
        k, v = gather_blocks(self.k[layer], tables), gather_blocks(self.v[layer], tables)
        if self.quantized:
            k = self._dequantize(k, gather_blocks(self.k_scale[layer], tables))
            v = self._dequantize(v, gather_blocks(self.v_scale[layer], tables))
        return k, v

    def _quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        qmax = _QMAX[self.store]
        scale = (x.float().abs().amax(dim=-1) / qmax).clamp(min=1e-12)
        q = x.float() / scale[..., None]
        if self.store == torch.int8:
            q = q.round_().clamp_(-qmax, qmax)
        return q.to(self.store), scale

    def _dequantize(self, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return (q.float() * scale[..., None]).to(self.dtype)


class BlockAllocator:
    """The pool's blocks: a free list, a reference count per block in use, and the prefix index.

    With prefix caching, a full block of prompt tokens is known by the hash of its token chain (its tokens and
    every token before it). Sequences with the same prefix share its blocks (one reference each); a block no
    sequence holds stays cached under its hash until its room is needed, least recently used first.
    """

    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks, self.block_size = num_blocks, block_size
        self.free = list(range(num_blocks - 1, -1, -1))
        self.refs = [0] * num_blocks
        self.hash_of: dict[int, int] = {}  # block -> its chain hash, for full blocks in the index
        self.by_hash: dict[int, int] = {}  # chain hash -> block
        self.unused: dict[int, None] = {}  # indexed blocks nobody holds, least recently used first

    @property
    def available(self) -> int:
        return len(self.free) + len(self.unused)

    def allocate(self, n: int, tokens_needed: int) -> list[int]:
        """n blocks (free ones first, then the least recently used cached ones), or KVCacheFullError saying how
        many tokens and blocks were asked of what the pool holds."""
        if n > self.available:
            raise KVCacheFullError(
                f"paged KV cache is out of blocks: the batch needs {tokens_needed} tokens of KV but the pool holds "
                f"{self.num_blocks} blocks x {self.block_size} = {self.num_blocks * self.block_size} tokens: "
                f"it needs {n} more blocks (each sequence takes whole blocks) and {self.available} are free; "
                "raise num_blocks (0 sizes it for batch_size x max_seq_len) or lower batch_size or output length"
            )
        out = []
        for _ in range(n):
            if self.free:
                block = self.free.pop()
            else:  # evict the least recently used cached prefix block
                block = next(iter(self.unused))
                del self.unused[block], self.by_hash[self.hash_of.pop(block)]
            self.refs[block] = 1
            out.append(block)
        return out

    def release(self, blocks: list[int]) -> None:
        for block in reversed(blocks):
            self.refs[block] -= 1
            if self.refs[block] == 0:
                if block in self.hash_of:
                    self.unused[block] = None  # most recently used: the end of the eviction order
                else:
                    self.free.append(block)

    def lookup(self, hashes: list[int]) -> list[int]:
        """The cached blocks of the longest prefix of `hashes` in the index, each now held once more."""
        hit = []
        for h in hashes:
            block = self.by_hash.get(h)
            if block is None:
                break
            if self.refs[block] == 0:
                del self.unused[block]
            self.refs[block] += 1
            hit.append(block)
        return hit

    def index(self, block: int, h: int) -> None:
        """Block `block` is full and holds the chain `h`: later sequences with that prefix may share it."""
        if h not in self.by_hash and block not in self.hash_of:
            self.by_hash[h], self.hash_of[block] = block, h


class PagedKVCache(KVCache):
    """Paged cache: sequence b's token at position p lives in block block_tables[b][p // bs] at p % bs."""

    def __init__(self, args: ModelArgs, batch_size: int, max_seq_len: int, dtype: torch.dtype, kv_dtype: str,
                 device: torch.device, block_size: int, num_blocks: int = 0, scratch: bool = False):
        self.block_size = block_size
        self.max_blocks = -(-max_seq_len // block_size)
        num_blocks = num_blocks or batch_size * self.max_blocks
        # with scratch=True one more block, outside the allocator, takes the writes of CUDA-graph padding rows
        super().__init__(args, batch_size, max_seq_len, dtype, kv_dtype, device, rows=num_blocks + scratch,
                         row_len=block_size)
        self.scratch = num_blocks
        self.allocator = BlockAllocator(num_blocks, block_size)
        self.tables: list[list[int]] = [[] for _ in range(batch_size)]
        self.block_tables = torch.zeros(batch_size, self.max_blocks, dtype=torch.long, device=device)

    def reset(self) -> None:
        for row in range(len(self.tables)):
            self.free_row(row)

    def blocks_to_grow(self, row: int, n_tokens: int) -> int:
        return max(0, -(-n_tokens // self.block_size) - len(self.tables[row]))

    @property
    def free_blocks(self) -> int:
        return self.allocator.available

    def grow(self, row: int, n_tokens: int) -> None:
        KVCache.grow(self, row, n_tokens)
        n = self.blocks_to_grow(row, n_tokens)
        if n:
            self._append(row, self.allocator.allocate(n, n_tokens))

    def free_row(self, row: int) -> None:
        self.allocator.release(self.tables[row])
        self.tables[row].clear()

    def share_prefix(self, row: int, hashes: list[int]) -> int:
        """Give empty row `row` the cached blocks of the longest indexed prefix of `hashes` (chain hashes of its
        full prompt blocks); the tokens they hold."""
        blocks = self.allocator.lookup(hashes)
        if blocks:
            self._append(row, blocks)
        return len(blocks) * self.block_size

    def index_blocks(self, row: int, hashes: list[int], start: int) -> None:
        """Row `row`'s full blocks start, start+1, ... hold the chains `hashes`: put them in the prefix index."""
        for i, h in enumerate(hashes):
            self.allocator.index(self.tables[row][start + i], h)

    def _append(self, row: int, blocks: list[int]) -> None:
        start = len(self.tables[row])
        self.tables[row].extend(blocks)
        self.block_tables[row, start:start + len(blocks)] = torch.tensor(blocks, dtype=torch.long)

    def reserve(self, seq_lens: list[int]) -> None:
        super().reserve(seq_lens)
        needed = [self.blocks_to_grow(b, n) for b, n in enumerate(seq_lens)]
        new = iter(self.allocator.allocate(sum(needed), sum(seq_lens)))  # all or nothing
        for b, n in enumerate(needed):
            if n:
                self._append(b, [next(new) for _ in range(n)])

    def slots(self, b: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.block_tables[b, pos // self.block_size], pos % self.block_size

    def decode_tables(self, rows: int | torch.Tensor) -> torch.Tensor:
        return self.block_tables[_rows(rows, self.block_tables.device)].to(torch.int32)

    def read_len(self, length: int) -> int:
        return -(-length // self.block_size) * self.block_size

    def read(self, layer: int, rows: int | torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gather(layer, self.block_tables[_index(rows), : -(-length // self.block_size)])


def _rows(rows: int | torch.Tensor, device) -> torch.Tensor:
    """Cache rows as a tensor: `rows` itself, or 0..rows-1."""
    return torch.arange(rows, device=device) if isinstance(rows, int) else rows


def _index(rows: int | torch.Tensor):
    """Cache rows as an index: rows 0..rows-1 as a slice (views, no copy), or the row tensor itself."""
    return slice(None, rows) if isinstance(rows, int) else rows


def gather_blocks(pool: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """pool [X, Hkv, Y, ...] read through tables [B, n] -> [B, Hkv, n*Y, ...] in table order."""
    x = pool[tables.long()].transpose(1, 2)  # [B, n, Hkv, Y, ...] -> [B, Hkv, n, Y, ...]
    return x.reshape(x.shape[0], x.shape[1], -1, *x.shape[4:])
