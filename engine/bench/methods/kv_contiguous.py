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

Simplified: no GPU virtual-memory API (the OS's lazy commit stands in for it on CPU); one
request; full-attention layers only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from transformers.cache_utils import DynamicLayer

from engine.errors import InputError
from .base import GenState, Method, Query
from .params import int_param, reject_unknown

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


class ContiguousLayer(DynamicLayer):
    """One layer's K and V in a buffer of ``reserve`` positions, written in place; ``keys`` and
    ``values`` are views of the filled part (what attention reads)."""

    def __init__(self, reserve: int) -> None:
        super().__init__()
        self.reserve = reserve
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        b, h, _, dk = key_states.shape
        dv = value_states.shape[-1]
        # torch.empty: on CPU the pages are committed when first written, not here
        self.kbuf = torch.empty((b, h, self.reserve, dk), dtype=key_states.dtype, device=self.device)
        self.vbuf = torch.empty((b, h, self.reserve, dv), dtype=value_states.dtype, device=self.device)
        self.keys = self.kbuf[:, :, :0]
        self.values = self.vbuf[:, :, :0]
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.reserve:
            raise InputError(f"contiguous KV cache: {end} positions exceed the {self.reserve} reserved")
        self.kbuf[:, :, self.length:end].copy_(key_states)
        self.vbuf[:, :, self.length:end].copy_(value_states)
        self.length = end
        self.keys = self.kbuf[:, :, :end]
        self.values = self.vbuf[:, :, :end]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def kv_views(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(filled view, the buffer it lives in) for the memory meter (engine/bench/memory.py)."""
        if not self.is_initialized:
            return []
        return [(self.keys, self.kbuf), (self.values, self.vbuf)]


class KVContiguous(Method):
    name = "kv-contiguous"
    label = "KV cache contiguous, written in place (vAttention-style; same HF forward)"
    simplification = ("the OS's lazy page commit stands in for vAttention's GPU virtual-memory "
                      "reservation (on CUDA the buffer is sized to prompt + new tokens)")
    tf_chunked = True  # an exact cache: teacher forcing may feed the targets in one chunk

    def __init__(self, reserve: Any = "context", **params: Any) -> None:
        reject_unknown(self.name, params, ["reserve"])
        if reserve != "context":
            reserve = int_param("reserve", reserve, 1)
        super().__init__(reserve=reserve)
        self.reserve = reserve
        self._need = 0

    def run(self, lm: LoadedModel, q: Query, max_new_tokens: int, **kw: Any):
        self._need = max_new_tokens
        try:
            return super().run(lm, q, max_new_tokens, **kw)
        finally:
            self._need = 0

    def positions(self, lm: LoadedModel, prompt_len: int) -> int:
        if self.reserve != "context":
            return int(self.reserve)
        if lm.torch_device.type == "cuda":  # no lazy commit: reserve what this request needs
            return prompt_len + max(self._need, 1) + 1
        return int(lm.context_length)

    def new_state(self, lm: LoadedModel, q: Query, prompt_ids: list[int]) -> GenState:
        st = super().new_state(lm, q, prompt_ids)
        if any(getattr(lay, "is_sliding", False) for lay in st.cache.layers) or not st.cache.layers:
            raise InputError(f"{self.name}: supports full-attention layers only")
        reserve = self.positions(lm, len(prompt_ids))
        st.cache.layers = [ContiguousLayer(reserve) for _ in st.cache.layers]
        st.info["reserved_positions"] = reserve
        return st
