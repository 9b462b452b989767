"""KV eviction: attention sinks + recent window (StreamingLLM-style), with true position ids.

After every forward the cache keeps the first ``sinks`` tokens and the last ``window`` tokens of
each layer; everything between is dropped (the kept slices are copied into fresh tensors so the
dropped bytes are really freed). Hugging Face caches post-RoPE keys, so kept keys keep their
original rotation; the next token must be fed at its *true* position, not at the (smaller) cache
length, which is what ``position_ids=None`` would use (docs/kv-cache.md: next-token KL to full
context 0.014 with true positions vs 0.62 with default ones on the bundled model).

The prompt is prefilled whole and evicted afterwards, so the transient peak is the full prompt's
KV (reported as ``kv_bytes_peak``); from then on the cache never exceeds sinks + window tokens.
Batch 1, no padding: ``attention_mask`` stays None.

Masks per layer. Hugging Face builds ONE attention mask per forward, sized from the first
layer's cache (``create_causal_mask``: ``get_mask_sizes`` of layer 0, i.e. its length + the new
tokens), and hands it to every layer. After eviction the layers may hold different lengths
(CAKE, PyramidKV), so that mask fits layer 0 only: eager attention adds it to every layer's
scores and fails on the first layer of another length; SDPA skips the mask for a single query
but not for several tokens fed at once. ``EvictingMethod.feed`` therefore replaces the mask in
front of each attention module with the one transformers builds for that layer's own cache
(``create_causal_mask(..., layer_idx=l)``): every cached entry visible, causal among the new
tokens. For one query under SDPA that is None, as before; under eager it is all zeros (a decode
step attends to every cached row). Other attention implementations are refused (untested).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch

from engine.errors import InputError
from .base import GenState, Method, Query
from .params import int_param, reject_unknown

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


_int_param = int_param


def layer_kv(cache: Any) -> list[Any]:
    """The cache's layer objects that hold tensors (DynamicLayer-like: ``keys``/``values``)."""
    return [lay for lay in cache.layers if torch.is_tensor(getattr(lay, "keys", None))]


def attention_modules(model: Any) -> list[Any]:
    """Decoder attention modules in layer order (they carry ``layer_idx``)."""
    mods = [m for m in model.modules()
            if hasattr(m, "q_proj") and hasattr(m, "layer_idx") and hasattr(m, "head_dim")]
    return sorted(mods, key=lambda m: m.layer_idx)


#: attention implementations the per-layer masks are built and tested for
MASKED_ATTENTION = ("sdpa", "eager")


def attn_implementation(lm: LoadedModel) -> str:
    """The model's attention implementation as transformers dispatches on it."""
    return str(getattr(lm.model.config, "_attn_implementation", None) or "eager")


def _layer_mask_hook(config: Any, cache: Any):
    """A forward pre-hook for an attention module: its ``attention_mask`` becomes the mask
    transformers builds for that module's own cache layer (see the module docstring)."""
    from transformers.masking_utils import create_causal_mask

    def hook(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        kwargs["attention_mask"] = create_causal_mask(
            config=config, inputs_embeds=hidden, attention_mask=None, cache=cache,
            position_ids=kwargs.get("position_ids"), layer_idx=module.layer_idx)
        return args, kwargs
    return hook


def keep_sinks_recent(cache: Any, sinks: int, window: int) -> int:
    """Evict in place: keep the first ``sinks`` and last ``window`` positions of every layer.
    Returns the number of (token, layer) entries dropped."""
    dropped = 0
    for lay in layer_kv(cache):
        n = lay.keys.shape[-2]
        if n <= sinks + window:
            continue
        lay.keys = torch.cat([lay.keys[..., :sinks, :], lay.keys[..., n - window:, :]], dim=-2)
        lay.values = torch.cat([lay.values[..., :sinks, :], lay.values[..., n - window:, :]], dim=-2)
        dropped += n - sinks - window
    return dropped


class EvictingMethod(Method):
    """Shared mechanics of the eviction rows: true (or, for comparison, default) position ids,
    peak and stored KV bytes, eviction after every forward (subclasses define ``evict``)."""

    positions: str = "true"

    def new_state(self, lm: LoadedModel, q: Query, prompt_ids: list[int]) -> GenState:
        st = super().new_state(lm, q, prompt_ids)
        if any(getattr(lay, "is_sliding", False) for lay in st.cache.layers):
            raise InputError(f"{self.name}: {getattr(lm, 'name', 'this model')} has sliding-window "
                             "attention layers; KV eviction here supports full-attention layers only")
        impl = attn_implementation(lm)
        if impl not in MASKED_ATTENTION:
            raise InputError(f"{self.name}: attention implementation {impl!r} is not supported with "
                             "KV eviction (layers hold different lengths, and only the per-layer "
                             "masks of 'sdpa' and 'eager' are built and tested here); load the model "
                             "with attn_implementation='sdpa' (the default) or 'eager'")
        if not attention_modules(lm.model):
            raise InputError(f"{self.name}: {getattr(lm, 'name', 'this model')} has no attention "
                             "modules with q_proj and layer_idx; KV eviction needs them")
        st.info.update(kv_bytes_peak=0, evicted=0, positions=self.positions)
        return st

    def position_ids(self, lm: LoadedModel, st: GenState, n: int) -> Optional[torch.Tensor]:
        if self.positions == "default":
            return None  # HF: arange(n) + cache length — wrong once anything was evicted
        return torch.arange(st.pos, st.pos + n, device=lm.torch_device).unsqueeze(0)

    def feed(self, lm: LoadedModel, st: GenState, ids: list[int], keep: int = 1) -> torch.Tensor:
        t = torch.tensor([ids], dtype=torch.long, device=lm.torch_device)
        handles = []
        if len(ids) > 1 or attn_implementation(lm) != "sdpa":  # SDPA: no mask for one query
            hook = _layer_mask_hook(lm.model.config, st.cache)
            handles = [m.register_forward_pre_hook(hook, with_kwargs=True)
                       for m in attention_modules(lm.model)]
        try:
            out = st.fwd.logits(t, st.cache, position_ids=self.position_ids(lm, st, len(ids)),
                                attention_mask=None, keep=keep)[0]
        finally:
            for h in handles:
                h.remove()
        st.pos += len(ids)
        st.info["kv_bytes_peak"] = max(st.info["kv_bytes_peak"], self.kv_bytes(st))
        st.info["evicted"] += self.evict(lm, st)
        st.info["kv_tokens_kept"] = [lay.keys.shape[-2] for lay in layer_kv(st.cache)]
        return out

    def evict(self, lm: LoadedModel, st: GenState) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def kv_bytes_peak(self, st: GenState) -> Optional[int]:
        return int(st.info.get("kv_bytes_peak") or 0) or None


class SinksRecent(EvictingMethod):
    """StreamingLLM-style: a few sink tokens + a recent window, true position ids."""

    name = "evict-sinks"
    label = "KV eviction: attention sinks + recent window (StreamingLLM-style, true positions)"
    simplification = ("StreamingLLM re-assigns positions inside the cache; here true positions "
                      "are kept (post-RoPE keys), and the prompt is prefilled whole first")

    def __init__(self, sinks: int = 4, window: int = 124, positions: str = "true",
                 budget: Optional[int] = None, **params: Any):
        reject_unknown(self.name, params, ["sinks", "window", "budget", "positions"])
        sinks = _int_param("sinks", sinks, 0)
        if budget is not None:  # tokens per layer, as the CAKE row counts it: window = budget − sinks
            budget = _int_param("budget", budget, sinks + 1)
            window = budget - sinks
        window = _int_param("window", window, 1)
        if positions not in ("true", "default"):
            raise InputError(f"positions must be 'true' or 'default' (got {positions!r})")
        super().__init__(sinks=sinks, window=window, positions=positions)
        self.sinks, self.window, self.positions = sinks, window, positions
        if positions == "default":
            self.label = self.label.replace("true positions", "DEFAULT positions (wrong)")

    def evict(self, lm: LoadedModel, st: GenState) -> int:
        return keep_sinks_recent(st.cache, self.sinks, self.window)
