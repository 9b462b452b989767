"""KV cache quantized to FP8 (e4m3) with transformers' built-in ``QuantizedCache(backend="fp8")``.

Per-tensor scale per layer, frozen at the first update (the prefill). The prefill attends at full
precision; every later step dequantizes the whole layer's K/V before attending, so stored bytes
shrink ~4x vs fp32 while the transient peak and the per-step time grow. Stored bytes are summed
from the FP8 tensors and their scales; the peak adds one layer's dequantized K+V (layers run one
after another and the dequantized copies are freed between them), computed from tensor shapes.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch

from .base import GenState, Method, Query

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


def _nbytes(t: Any) -> int:
    return t.numel() * t.element_size() if torch.is_tensor(t) else 0


def _orig_itemsize(lay: Any) -> int:
    """Bytes per element of the dequantized states. transformers 5.23 kept ``lay.dtype``; 5.24
    dropped it, but both keep ``lay.keys`` as a (possibly empty) tensor of the original dtype."""
    dtype = getattr(lay, "dtype", None)
    if dtype is None:
        dtype = lay.keys.dtype
    return torch.empty((), dtype=dtype).element_size()


class KVFp8(Method):
    name = "kv-fp8"
    label = "KV cache FP8 e4m3 (transformers QuantizedCache, per-tensor scale)"
    simplification = "transformers' QuantizedCache with a per-tensor scale and a full-precision residual"

    def new_state(self, lm: LoadedModel, q: Query, prompt_ids: list[int]) -> GenState:
        from transformers import QuantizedCache

        fwd = self.forward(lm)
        cache = QuantizedCache(backend="fp8", config=lm.model.config)
        return GenState(fwd=fwd, cache=cache, pending=list(prompt_ids), pos=0,
                        prompt_tokens_in=len(prompt_ids))

    def kv_bytes(self, st: GenState) -> int:
        total = 0
        for lay in st.cache.layers:
            for qt in (lay._quantized_keys, lay._quantized_values):
                if qt is not None:
                    total += _nbytes(qt[0]) + _nbytes(qt[1])
            total += _nbytes(getattr(lay, "keys", None)) + _nbytes(getattr(lay, "values", None))
        return total

    def kv_bytes_peak(self, st: GenState) -> Optional[int]:
        worst = 0
        for lay in st.cache.layers:
            if lay._quantized_keys is None:
                continue
            k, v = lay._quantized_keys[0], lay._quantized_values[0]
            item = _orig_itemsize(lay)
            worst = max(worst, (k.numel() + v.numel()) * item)
        return self.kv_bytes(st) + worst
