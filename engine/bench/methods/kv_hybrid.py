"""The replaced system's "Hybrid KV Cache" (vAttention + CAKE), built so both halves really run
together: every layer's K and V live in the contiguous reservation of ``kv-contiguous`` (one
anonymous mmap made before the prefill, tokens written in place), and CAKE's eviction
(``evict-cake``: the same window scoring, layer budgets and decode-time rule, the same code)
decides what is kept; the kept entries are then *compacted* inside the buffer — gathered to the
front of each head's rows, in their original order — instead of being copied into new tensors.
Keys keep their rotation, and tokens keep being fed at their true positions, as evict-cake does.

What the two halves give each other, as measured figures:

- KV held (``kv_bytes_allocated``): the whole reservation, spare capacity and the evicted
  entries' rows included (eviction frees nothing: the rows after the kept ones are just no longer
  read). On CPU only the pages written are resident: the full prompt's rows were written by the
  prefill before eviction, so they stay committed (the high-water delta shows it).
- Bytes copied per generated token: the new token's K and V, plus every compaction (the decode
  rule evicts one entry per step once a layer is over B_l + w, so each step moves the rows after
  the evicted one: a staging copy and the write back, both counted). ``evict-cake`` instead
  gathers every kept entry into new tensors at each eviction, and ``DynamicCache`` re-copies the
  whole cache per token (``torch.cat``).
- No reallocation and no ``torch.cat`` after the reservation is made.

Its eviction decisions and outputs are evict-cake's: same kept entries, same tokens, log-probs
within fp32 rounding (tests/bench/methods/test_kv_hybrid.py); a prompt that fits the budget is
left whole, and then the row is kv-contiguous.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .base import GenState
from .kv_contiguous import ContiguousKV, ContiguousLayer
from .kv_evict_cake import CakeEviction
from .params import reject_unknown

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

_CAKE = ["budget", "window", "gamma", "tau1", "tau2", "pool"]


class HybridKV(ContiguousKV, CakeEviction):
    """CAKE's eviction, compacting in place inside the contiguous reservation."""

    name = "hybrid-kv"
    label = "Hybrid KV: contiguous buffer + CAKE eviction"
    simplification = ("the seed's vAttention + CAKE as one cache: the OS's lazy page commit "
                      "stands in for vAttention's GPU virtual-memory API, evicted rows are "
                      "compacted (copied to the front), not unmapped, so the prefill's pages stay "
                      "committed; CAKE as in evict-cake (budgets after the whole prefill, the "
                      "decode rule after a step)")

    def __init__(self, reserve: Any = "context", **cake: Any) -> None:
        reject_unknown(self.name, {k: v for k, v in cake.items() if k not in _CAKE}, _CAKE + ["reserve"])
        CakeEviction.__init__(self, **cake)
        self.reserve = self.check_reserve(reserve)
        self.params["reserve"] = self.reserve

    def _apply_keep(self, lay: Any, idx: torch.Tensor) -> None:
        lay.compact(idx)

    def evict(self, lm: LoadedModel, st: GenState) -> int:
        out = super().evict(lm, st)
        lays = [lay for lay in st.cache.layers if isinstance(lay, ContiguousLayer)]
        st.info["kv_compaction_bytes"] = sum(lay.bytes_compacted for lay in lays)
        return out
