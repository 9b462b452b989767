"""A contiguous KV cache, vAttention-style, against ``DynamicCache`` on the same forward.

vAttention (Prabhu et al., ASPLOS 2025) keeps each request's KV cache virtually contiguous:
address space for the whole context is reserved up front and physical pages are committed only
as tokens are written, instead of paging the cache (PagedAttention) or growing it by copies.
Its paper claims throughput and latency, not fewer bytes. What can be measured honestly here:

- bytes written per generated token: ``DynamicCache`` concatenates (``torch.cat``) every layer's
  K and V on every step, an O(context) copy per token; this cache writes the new token in place;
- memory reserved against committed: the buffer covers the whole context window (``reserve``)
  but on CPU only pages that were written become resident (the kernel commits a page on first
  touch), so ``kv_bytes_allocated`` is the reservation and the process high-water delta shows
  what was committed; on CUDA nothing is lazy, so the reservation is the prompt plus the new
  tokens;
- decode latency against context length, on the very same Hugging Face forward as the baseline
  (``lean-fp32`` changes the forward too, so it cannot isolate the cache).

The reservation is one anonymous ``mmap`` for every layer's K and V, made before the prefill
(on CPU): address space only, each page committed when first written, all of it returned to the
system when the cache is freed. Allocating it per layer with ``torch.empty`` at each layer's first
update (the earlier code) put the buffers on glibc's heap between the prefill's transient
activations (glibc serves these 6 MiB blocks from the heap once its mmap threshold has risen,
which it does after the first large free): each buffer landed on pages the previous layers'
activations had already touched, so nearly the whole reservation became resident — on a
498-token prompt the process committed 281 MiB for a 23 MiB cache (docs/bench-methods.md,
"Contiguous KV").

The cache and its reservation are one part (``ContiguousKV``): ``kv-contiguous`` is that part
alone; ``hybrid-kv`` (kv_hybrid.py) puts CAKE's eviction on it, compacting kept entries inside
the buffer once after the prefill (``ContiguousLayer.compact``) and then writing each new token
into the slot the last eviction freed (``ContiguousLayer.release``).

Simplified: no GPU virtual-memory API (the OS's lazy commit stands in for it on CPU); one
request; full-attention layers only.
"""
from __future__ import annotations

import mmap
from typing import TYPE_CHECKING, Any, Optional

import torch
from transformers.cache_utils import DynamicLayer

from engine.errors import InputError
from .base import GenState, Method, Query
from .params import int_param, reject_unknown

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


class ContiguousLayer(DynamicLayer):
    """One layer's K and V in a buffer of ``reserve`` positions, written in place; ``keys`` and
    ``values`` are views of the filled part (what attention reads). The buffers come from
    ``reserve_buffers`` before the prefill, or are made at the first update when none are given.

    ``bytes_written`` counts every byte the layer writes into its buffers (appends and
    compactions), so the copy meter (engine/bench/memory.py) reads what was really written
    instead of inferring it from shapes: a compaction shortens the filled part while it moves
    rows, which an inference from lengths would count as nothing."""

    def __init__(self, reserve: int, kbuf: Optional[torch.Tensor] = None,
                 vbuf: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        self.reserve = reserve
        self.length = 0
        self.bytes_written = 0
        self.bytes_compacted = 0  # the part of bytes_written that compactions wrote
        self.seen = 0  # tokens ever written: the next token's position in the order fed
        self.free: Optional[torch.Tensor] = None  # (KV heads,) one released slot per head
        self.slot_pos: Optional[torch.Tensor] = None  # (KV heads, reserve) position of each slot's token
        if kbuf is not None and vbuf is not None:
            self.kbuf, self.vbuf = kbuf, vbuf
            self.device = kbuf.device
            self.keys, self.values = kbuf[:, :, :0], vbuf[:, :, :0]
            self._init_positions()
            self.is_initialized = True

    def _init_positions(self) -> None:
        self.slot_pos = torch.full((self.kbuf.shape[1], self.reserve), -1, dtype=torch.long,
                                   device=self.kbuf.device)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        b, h, _, dk = key_states.shape
        dv = value_states.shape[-1]
        self.kbuf = torch.empty((b, h, self.reserve, dk), dtype=key_states.dtype, device=self.device)
        self.vbuf = torch.empty((b, h, self.reserve, dv), dtype=value_states.dtype, device=self.device)
        self.keys = self.kbuf[:, :, :0]
        self.values = self.vbuf[:, :, :0]
        self._init_positions()
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the new tokens: the first one into each head's released slot when there is one
        (``release``), the rest appended after the filled part. Either way only the new
        tokens' bytes are written."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        t = key_states.shape[-2]
        reuse = 1 if self.free is not None and t else 0
        end = self.length + t - reuse
        if key_states.shape[:2] != self.kbuf.shape[:2] or key_states.shape[-1] != self.kbuf.shape[-1] \
                or key_states.dtype != self.kbuf.dtype:
            raise InputError(f"contiguous KV cache: keys {tuple(key_states.shape)} {key_states.dtype} "
                             f"do not fit the reserved {tuple(self.kbuf.shape)} {self.kbuf.dtype}")
        if end > self.reserve:
            raise InputError(f"contiguous KV cache: {end} positions exceed the {self.reserve} reserved")
        pos = torch.arange(self.seen, self.seen + t, device=self.slot_pos.device)
        if reuse:
            slots = self.free.view(1, -1, 1, 1)  # (1, heads, 1, 1): a per-head scatter
            self.kbuf.scatter_(2, slots.expand(1, -1, 1, self.kbuf.shape[-1]), key_states[:, :, :1])
            self.vbuf.scatter_(2, slots.expand(1, -1, 1, self.vbuf.shape[-1]), value_states[:, :, :1])
            self.slot_pos.scatter_(1, self.free.view(-1, 1), pos[:1].expand(self.free.shape[0], 1))
            self.free = None
        self.kbuf[:, :, self.length:end].copy_(key_states[:, :, reuse:])
        self.vbuf[:, :, self.length:end].copy_(value_states[:, :, reuse:])
        self.slot_pos[:, self.length:end] = pos[reuse:]
        self.bytes_written += _nbytes(key_states) + _nbytes(value_states)
        self.seen += t
        self._fill(end)
        return self.keys, self.values

    def release(self, slots: torch.Tensor) -> None:
        """Free one slot per head (``slots``: (KV heads,) indices into the filled part), written
        over by the next token (``update``): nothing moves. Until then the slot still lies in
        the filled view, so the next forward must write at least one token before attention
        reads (every forward does: the new token goes in first), and ``get_seq_length`` counts
        the live entries only, so Hugging Face's mask sizes (cache length + new tokens) match
        the view after the write. One slot per head at most: the first new token goes into
        it and the rest are appended, so in a several-token forward each later token still lies
        after the earlier ones, as the causal mask assumes."""
        if self.free is not None or slots.shape != (self.kbuf.shape[1],) \
                or bool((slots < 0).any()) or bool((slots >= self.length).any()):
            raise InputError(f"contiguous KV cache: cannot release slots {slots.tolist()} of "
                             f"{self.length} positions x {self.kbuf.shape[1]} heads"
                             + (" (a slot is already free)" if self.free is not None else ""))
        self.free = slots.to(self.kbuf.device, torch.long)

    def positions(self) -> torch.Tensor:
        """(KV heads, filled length) position, in the order fed, of the token each slot holds;
        a released slot's entry is stale until it is written over."""
        return self.slot_pos[:, :self.length]

    def compact(self, idx: torch.Tensor) -> None:
        """Keep only positions ``idx`` (KV heads, m) of each head, ascending, moved to the front
        of the buffer in place (batch 1): no new allocation, the buffer keeps its address.

        Sorted distinct indices satisfy idx[j] >= j, so in each head the leading positions kept
        where they are are not touched; from that head's first moved position on, its kept rows
        are gathered and written back. The gather goes through a staging tensor (PyTorch refuses
        a copy between overlapping regions), and both copies are counted in ``bytes_written``."""
        heads, m = idx.shape[0], idx.shape[-1]
        if idx.dim() != 2 or heads != self.kbuf.shape[1] or self.kbuf.shape[0] != 1 or m > self.length \
                or self.free is not None:
            raise InputError(f"contiguous KV cache: cannot keep {tuple(idx.shape)} of "
                             f"{self.length} positions x {self.kbuf.shape[1]} heads")
        moved = idx != torch.arange(m, device=idx.device)
        for h in range(heads):
            at = moved[h].nonzero()
            if not len(at):
                continue
            start = int(at[0])
            self.slot_pos[h, start:m] = self.slot_pos[h].index_select(0, idx[h, start:])
            for buf in (self.kbuf, self.vbuf):
                rows = buf[0, h].index_select(0, idx[h, start:])  # the staging copy
                buf[0, h, start:m].copy_(rows)
                n = 2 * _nbytes(rows)
                self.bytes_written += n
                self.bytes_compacted += n
        self._fill(m)

    def _fill(self, end: int) -> None:
        self.length = end
        self.keys = self.kbuf[:, :, :end]
        self.values = self.vbuf[:, :, :end]

    def get_seq_length(self) -> int:
        """Live entries: the filled length less a released slot (see ``release``)."""
        return self.length - (1 if self.free is not None else 0)

    def held_bytes(self) -> int:
        """Bytes of the live entries' K and V (a released slot's stale row not counted)."""
        if not self.is_initialized or not self.length:
            return 0
        return (_nbytes(self.keys) + _nbytes(self.values)) * self.get_seq_length() // self.length

    def kv_views(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(filled view, the buffer it lives in) for the memory meter (engine/bench/memory.py)."""
        if not self.is_initialized:
            return []
        return [(self.keys, self.kbuf), (self.values, self.vbuf)]


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class ContiguousKV(Method):
    """The contiguous cache as a part any method can take (kv-contiguous alone, hybrid-kv with
    CAKE's eviction): every layer's K and V in one reservation made before the prefill, sized
    by ``reserve`` ("context", or a number of positions). Put it first among the bases so its
    ``new_state`` swaps the layers of the cache the others built."""

    reserve: Any = "context"
    _need = 0  # new tokens the current run decodes (sizes the CUDA reservation)

    @staticmethod
    def check_reserve(reserve: Any) -> Any:
        return reserve if reserve == "context" else int_param("reserve", reserve, 1)

    def run(self, lm: LoadedModel, q: Query, max_new_tokens: int, **kw: Any):
        self._need = max_new_tokens
        try:
            return super().run(lm, q, max_new_tokens, **kw)
        finally:
            self._need = 0

    def positions(self, lm: LoadedModel, prompt_len: int) -> int:
        """Positions to reserve: on CUDA (no lazy commit) what this request needs when its own
        ``run`` said how many tokens it decodes; otherwise (CPU, or a state made by teacher
        forcing or by a combination, which feed an unknown number of targets) the context."""
        if self.reserve != "context":
            return int(self.reserve)
        if lm.torch_device.type == "cuda" and self._need:
            return min(prompt_len + self._need + 1, int(lm.context_length))
        return int(lm.context_length)

    def kv_bytes(self, st: GenState) -> int:
        """The live entries' bytes (a slot released by eviction and not yet written over is
        not held data)."""
        lays = st.cache.layers
        if lays and all(isinstance(lay, ContiguousLayer) for lay in lays):
            return sum(lay.held_bytes() for lay in lays)
        return super().kv_bytes(st)

    def new_state(self, lm: LoadedModel, q: Query, prompt_ids: list[int]) -> GenState:
        st = super().new_state(lm, q, prompt_ids)
        if any(getattr(lay, "is_sliding", False) for lay in st.cache.layers) or not st.cache.layers:
            raise InputError(f"{self.name}: supports full-attention layers only")
        reserve = self.positions(lm, len(prompt_ids))
        bufs = reserve_buffers(lm, len(st.cache.layers), reserve)
        st.cache.layers = [ContiguousLayer(reserve, *bufs[i]) for i in range(len(st.cache.layers))]
        st.info["reserved_positions"] = reserve
        return st


class KVContiguous(ContiguousKV):
    name = "kv-contiguous"
    label = "KV cache contiguous, written in place (vAttention-style; same HF forward)"
    simplification = ("the OS's lazy page commit stands in for vAttention's GPU virtual-memory "
                      "reservation (on CUDA the buffer is sized to prompt + new tokens)")
    tf_chunked = True  # an exact cache: teacher forcing may feed the targets in one chunk

    def __init__(self, reserve: Any = "context", **params: Any) -> None:
        reject_unknown(self.name, params, ["reserve"])
        reserve = self.check_reserve(reserve)
        super().__init__(reserve=reserve)
        self.reserve = reserve


def kv_shape(lm: LoadedModel) -> tuple[int, int]:
    """(KV heads, head dim) of the model's attention layers, from its config."""
    c = lm.model.config
    heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return int(heads), int(dim)


def reserve_buffers(lm: LoadedModel, layers: int,
                    positions: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, (K buffer, V buffer) of shape (1, KV heads, positions, head dim), made before
    the first forward. On CPU all of them are views of one anonymous mmap (address space reserved,
    pages committed on first write, unmapped when the last view is freed), so the reservation
    never lands on heap pages other tensors have touched; on CUDA (nothing is lazy there)
    ``torch.empty`` of the size this request needs."""
    heads, dim = kv_shape(lm)
    dtype = next(lm.model.parameters()).dtype
    shape = (2 * layers, 1, heads, positions, dim)
    if lm.torch_device.type == "cpu":
        n = 2 * layers * heads * positions * dim
        region = mmap.mmap(-1, n * torch.empty((), dtype=dtype).element_size())  # zero pages until written
        big = torch.frombuffer(region, dtype=dtype, count=n).view(shape)  # keeps ``region`` alive
    else:
        big = torch.empty(shape, dtype=dtype, device=lm.torch_device)
    views = big.unbind(0)
    return [(views[2 * i], views[2 * i + 1]) for i in range(layers)]
