"""The lean forward's K/V caches: one preallocated buffer per model for every layer's K and V,
written in place, grown by doubling, shared copy-on-write between forks. K and V of a layer lie
side by side in that buffer, as they do in the fused Q/K/V product's output, so a decode step
writes both with one copy.

``fork`` is O(1) — the fork shares its source's buffer and records its own length. A buffer
remembers its *frontier* (the furthest position any cache has written). A cache writes in place
only at positions at or beyond the frontier, which no other cache can hold; a write below it (a
fork continuing, or a source continuing after its fork already wrote) first copies the writer's own
prefix into a fresh buffer. So neither a fork nor its source is ever corrupted by the other's later
writes, and the common case — one cache decoding — never copies.
"""
from __future__ import annotations

from typing import Optional

import torch

from engine.errors import InputError

_MIN_CAP = 64


class KVStore:
    """K and V of every layer in one buffer ``kv``: (layers, 2, batch, kv_heads, cap, head_dim);
    ``k`` and ``v`` are its views (layers, batch, kv_heads, cap, head_dim)."""

    __slots__ = ("kv", "k", "v", "frontier")

    def __init__(self, kv: torch.Tensor, frontier: int) -> None:
        self.kv = kv
        self.k = kv[:, 0]
        self.v = kv[:, 1]
        self.frontier = frontier

    @property
    def cap(self) -> int:
        return int(self.k.shape[3])

    @property
    def batch(self) -> int:
        return int(self.k.shape[1])


class LeanCache:
    """A view of ``length`` positions of a (possibly shared) :class:`KVStore`. Opaque to callers:
    use the owning forward's methods."""

    __slots__ = ("store", "length", "batch")

    def __init__(self, store: Optional[KVStore], length: int, batch: int) -> None:
        self.store = store
        self.length = length
        self.batch = batch

    def get_seq_length(self) -> int:  # same spelling as HF caches, for code that inspects them
        return self.length


class LeanKV:
    """The cache operations of one model's K/V shape (the Forward cache interface)."""

    def __init__(self, n_layers: int, n_kv: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.n_layers = n_layers
        self.n_kv = n_kv
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = device

    def new_cache(self, batch: int = 1) -> LeanCache:
        return LeanCache(None, 0, batch)

    def _alloc(self, batch: int, cap: int, zero: bool = False) -> KVStore:
        shape = (self.n_layers, 2, batch, self.n_kv, cap, self.head_dim)
        make = torch.zeros if zero else torch.empty
        return KVStore(make(shape, dtype=self.dtype, device=self.device), 0)

    def reserve(self, cache: LeanCache, batch: int, t: int) -> KVStore:
        """A store this cache may write positions [length, length+t) into (copy-on-write)."""
        p = cache.length
        st = cache.store
        need = p + t
        if st is None:
            cache.store = st = self._alloc(batch, max(_MIN_CAP, need))
            cache.batch = batch
            st.frontier = 0
        elif batch != st.batch:
            raise InputError(f"batch {batch} does not match the cache's batch {st.batch}")
        elif need > st.cap or p < st.frontier:
            cap = max(need, 2 * st.cap) if need > st.cap else st.cap
            new = self._alloc(batch, cap)
            if p:
                new.kv[..., :p, :].copy_(st.kv[..., :p, :])
            new.frontier = p
            cache.store = st = new
        st.frontier = need
        return st

    def fork(self, cache: LeanCache, keep: Optional[int] = None) -> LeanCache:
        n = cache.length if keep is None else int(keep)
        if n < 0 or n > cache.length:
            raise InputError(f"cannot fork {n} positions of a cache holding {cache.length}")
        return LeanCache(cache.store if n else None, n, cache.batch)

    def _copy_rows(self, cache: LeanCache, rows: torch.Tensor) -> LeanCache:
        n = cache.length
        st = cache.store
        b = int(rows.numel())
        if st is None or n == 0:
            return LeanCache(None, 0, b)
        new = self._alloc(b, max(_MIN_CAP, n + max(_MIN_CAP, n // 4)))
        new.kv[..., :n, :].copy_(st.kv[..., :n, :].index_select(2, rows))
        new.frontier = n
        return LeanCache(new, n, b)

    def repeat(self, cache: LeanCache, n: int) -> LeanCache:
        rows = torch.arange(cache.batch, device=self.device).repeat_interleave(n)
        return self._copy_rows(cache, rows)

    def select(self, cache: LeanCache, rows: torch.Tensor) -> LeanCache:
        return self._copy_rows(cache, rows.to(self.device, torch.long))

    def stack(self, parts: list[tuple[LeanCache, int]]) -> LeanCache:
        """Batch-1 caches → one batch, row u right-aligned at max(keep) (zeros before it)."""
        L = max(int(n) for _, n in parts)
        # zero-filled: pad slots are masked, but uninitialised memory could hold NaN (0 × NaN)
        new = self._alloc(len(parts), L + _MIN_CAP, zero=True)
        new.frontier = L
        for u, (c, n) in enumerate(parts):
            if c.batch != 1:
                raise ValueError("stack takes batch-1 caches")
            if n:
                new.kv[:, :, u, :, L - n:L].copy_(c.store.kv[:, :, 0, :, :n])
        return LeanCache(new, L, len(parts))

    def from_tensors(self, k: torch.Tensor, v: torch.Tensor) -> LeanCache:
        """A batch-1 cache holding K and V of shape (layers, 1, kv_heads, n, head_dim), e.g. a
        snapshot read back from disk (copied into a fresh buffer with room to continue)."""
        n = int(k.shape[3])
        st = self._alloc(1, max(_MIN_CAP, n + max(_MIN_CAP, n // 4)))
        st.k[:, :, :, :n].copy_(k.to(st.k.device, st.k.dtype))
        st.v[:, :, :, :n].copy_(v.to(st.v.device, st.v.dtype))
        st.frontier = n
        return LeanCache(st, n, 1)

    def cache_bytes(self, cache: LeanCache) -> int:
        """Bytes of the K/V the cache holds (same figure as the standard path's DynamicCache)."""
        el = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.n_layers * cache.batch * self.n_kv * cache.length * self.head_dim * el

    def cache_allocated_bytes(self, cache: LeanCache) -> int:
        """Bytes of the buffer behind the cache (capacity included; shared with forks)."""
        st = cache.store
        return 0 if st is None else st.kv.numel() * st.kv.element_size()
