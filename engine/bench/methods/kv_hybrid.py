"""The replaced system's "Hybrid KV Cache" (vAttention + CAKE), built so both halves really run
together: every layer's K and V live in the contiguous reservation of ``kv-contiguous`` (one
anonymous mmap made before the prefill, tokens written in place), and CAKE's eviction
(``evict-cake``: the same window scoring, layer budgets and decode-time rule, the same code)
decides what is kept. The evicted entries' slots are reused, vAttention-style, instead of
copying the kept ones:

- after the prefill's eviction (a prompt over budget + window) the kept entries are compacted
  once to the front of each head's rows (a one-off copy, counted);
- while decoding, once a layer is over B_l + w, CAKE's rule evicts one entry per head per step:
  that entry's slot is released (``ContiguousLayer.release``) and the next token's K and V for
  that head are written into it (a per-head scatter), so a step writes the new token only;
  below the budget tokens are appended as in kv-contiguous.

Slot order then no longer follows the order the tokens came, and it need not: Hugging Face
caches keys after RoPE (each key carries its own position's rotation) and a one-query decode
step attends to every cached entry with no causal mask, so attention is the same sum in any
order of the entries (up to the order fp32 adds them). What does depend on order is CAKE's
bookkeeping — the recent window (the last w tokens fed), the average pooling of scores along
neighbouring positions, ties between equal scores — so the layer records the position of the
token in each slot, and the current query's attention is put back into position order before
CAKE scores it (``_in_order``); the entries kept are mapped back to slots. Each layer's mask
(built per layer by ``EvictingMethod.feed``; all visible for one query) is sized from its
``get_seq_length`` (live entries, a released slot not counted), which is what the view holds
after the new token is written.

Figures: KV held (``kv_bytes_allocated``) is the whole reservation (eviction frees nothing; on
CPU the prefill's full-prompt pages stay committed); bytes written per generated token are the
new token's K and V; ``kv_compaction_bytes`` is the prefill's one-off compaction (and any
eviction of several entries per head at once, which compacts too). The kept entries, the tokens
and the log-probs are evict-cake's (tests/bench/methods/test_kv_hybrid.py); a prompt that fits
the budget is left whole, and then the row is kv-contiguous.
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
    """CAKE's eviction inside the contiguous reservation: compacted once after the prefill,
    evicted slots reused by the next token while decoding."""

    name = "hybrid-kv"
    label = "Hybrid KV: contiguous buffer + CAKE eviction"
    simplification = ("the seed's vAttention + CAKE as one cache: the OS's lazy page commit "
                      "stands in for vAttention's GPU virtual-memory API; evicted slots are "
                      "reused by the next token, not unmapped (the prefill's pages stay "
                      "committed; the prefill's eviction compacts once); CAKE as in evict-cake "
                      "(budgets after the whole prefill, the decode rule after a step)")

    def __init__(self, reserve: Any = "context", **cake: Any) -> None:
        reject_unknown(self.name, {k: v for k, v in cake.items() if k not in _CAKE}, _CAKE + ["reserve"])
        CakeEviction.__init__(self, **cake)
        self.reserve = self.check_reserve(reserve)
        self.params["reserve"] = self.reserve

    @staticmethod
    def _order(lay: ContiguousLayer) -> torch.Tensor:
        """(KV heads, n) slots of each head sorted by the position of the token they hold."""
        return torch.sort(lay.positions(), dim=-1).indices

    def _in_order(self, lay: Any, a: torch.Tensor) -> torch.Tensor:
        order = self._order(lay)
        per = order.repeat_interleave(a.shape[0] // order.shape[0], dim=0)  # (H, n), GQA groups
        return a.gather(-1, per.unsqueeze(1).expand(-1, a.shape[1], -1))

    def _apply_keep(self, lay: Any, idx: torch.Tensor) -> None:
        slots = self._order(lay).gather(1, idx)  # the kept entries' slots
        gone = torch.ones(slots.shape[0], lay.length, dtype=torch.bool, device=slots.device)
        gone.scatter_(1, slots, False)
        if lay.length - idx.shape[1] == 1:  # CAKE's decode rule: one entry per head, slot reused
            lay.release(gone.nonzero()[:, 1])
        else:  # the prefill's eviction (or several at once): compact, keeping slot order
            lay.compact(slots.sort(dim=-1).values)

    def feed(self, lm: LoadedModel, st: GenState, ids: list[int], keep: int = 1) -> torch.Tensor:
        out = super().feed(lm, st, ids, keep)
        st.info["kv_tokens_kept"] = [lay.get_seq_length() for lay in st.cache.layers]
        return out

    def evict(self, lm: LoadedModel, st: GenState) -> int:
        out = super().evict(lm, st)
        lays = [lay for lay in st.cache.layers if isinstance(lay, ContiguousLayer)]
        st.info["kv_compaction_bytes"] = sum(lay.bytes_compacted for lay in lays)
        st.info["kv_bytes_per_layer"] = [lay.held_bytes() for lay in lays]
        return out
