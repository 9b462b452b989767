"""The one place a model forward happens. Generation, AdvTok scoring and tree-search rollouts call
a :class:`Forward` and never the HF model directly, so a faster implementation (the lean path of
``engine/lm/fastpath.py``) can replace the standard one without touching the decoding loops.

Caches are opaque to callers: every cache operation goes through the Forward that made it.
Forking never copies: transformers 5's ``DynamicLayer.update`` concatenates (it never writes the
stored tensors), so a new cache filled with views of another one's tensors is a safe fork.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional, Protocol

import torch

from engine.lm.config import ENGINE_PATHS  # noqa: F401  (declared with the settings)

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

log = logging.getLogger(__name__)


class Forward(Protocol):
    """What the decoding loops need from a model implementation."""

    name: str

    def new_cache(self, batch: int = 1) -> Any: ...

    def logits(self, ids: torch.Tensor, cache: Any, *, position_ids: Optional[torch.Tensor] = None,
               attention_mask: Optional[torch.Tensor] = None, keep: int = 1) -> torch.Tensor:
        """Feed ``ids`` (B, T) after ``cache`` (extended in place); fp32 logits of the last
        ``keep`` positions, shape (B, keep, V). ``keep=0`` means every position."""

    def hidden(self, ids: torch.Tensor, cache: Any, *, position_ids: Optional[torch.Tensor] = None,
               attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Final hidden states (B, T, H) after the final norm, before the head."""

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits for hidden states (…, H), with the model's own final logit transform."""

    def cache_len(self, cache: Any) -> int: ...

    def fork(self, cache: Any, keep: Optional[int] = None) -> Any:
        """A cache holding the first ``keep`` positions of ``cache``; the source never changes."""

    def repeat(self, cache: Any, n: int) -> Any:
        """Each batch row repeated ``n`` times (row-major: r0,r0,…,r1,r1,…)."""

    def select(self, cache: Any, rows: torch.Tensor) -> Any:
        """Keep only the given batch rows (in that order)."""

    def cache_bytes(self, cache: Any) -> int: ...

    def stack(self, parts: list[tuple[Any, int]]) -> Any:
        """One cache whose row u holds the first ``keep_u`` positions of batch-1 cache u,
        right-aligned at a common length max(keep) with zero-filled slots before them (the
        caller masks those). Resumes several trajectories in one batch without re-encoding."""


def _stack_rows(kvs: list[tuple[torch.Tensor, torch.Tensor]], keeps: list[int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B=len(kvs), heads, L, d) K and V from batch-1 (1, heads, ≥keep, d) tensors, right-aligned."""
    L = max(keeps)
    k0 = kvs[0][0]
    shape = (len(kvs), k0.shape[1], L, k0.shape[-1])
    K, V = k0.new_zeros(shape), k0.new_zeros(shape)
    for u, ((k, v), n) in enumerate(zip(kvs, keeps)):
        if n:
            K[u, :, L - n:] = k[0, :, :n]
            V[u, :, L - n:] = v[0, :, :n]
    return K, V


def _cache_kwarg(fn: Any) -> str:
    """transformers 5.24 renamed the forward's ``past_key_values`` to ``cache`` (the old name warns
    and goes in 5.40); pass whichever this model's forward declares."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _softcap(model: Any) -> Optional[float]:
    v = getattr(model.config, "final_logit_softcapping", None)
    return float(v) if v else None


class StandardForward:
    """The Hugging Face forward with a ``DynamicCache``: works for every causal LM."""

    name = "standard"

    def __init__(self, model: Any) -> None:
        self.model = model
        self.config = model.config
        self._cap = _softcap(model)
        self.device = next(model.parameters()).device
        self._kw = _cache_kwarg(model.forward)
        base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        self._base_kw = _cache_kwarg(base.forward)

    def new_cache(self, batch: int = 1) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    @torch.inference_mode()
    def logits(self, ids: torch.Tensor, cache: Any, *, position_ids: Optional[torch.Tensor] = None,
               attention_mask: Optional[torch.Tensor] = None, keep: int = 1) -> torch.Tensor:
        out = self.model(input_ids=ids, position_ids=position_ids, attention_mask=attention_mask,
                         use_cache=True, logits_to_keep=keep, **{self._kw: cache})
        return out.logits.float()

    @torch.inference_mode()
    def hidden(self, ids: torch.Tensor, cache: Any, *, position_ids: Optional[torch.Tensor] = None,
               attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        base = self.model.get_decoder() if hasattr(self.model, "get_decoder") else self.model.model
        out = base(input_ids=ids, position_ids=position_ids, attention_mask=attention_mask,
                   use_cache=True, **{self._base_kw: cache})
        return out.last_hidden_state

    @torch.inference_mode()
    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model.lm_head(hidden).float()
        if self._cap:
            logits = torch.tanh(logits / self._cap) * self._cap
        return logits

    def cache_len(self, cache: Any) -> int:
        return int(cache.get_seq_length())

    def _layers(self, cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for lay in cache.layers:
            if getattr(lay, "keys", None) is None or not torch.is_tensor(lay.keys) or lay.keys.numel() == 0:
                return []
            out.append((lay.keys, lay.values))
        return out

    def _build(self, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
        cache = self.new_cache()
        for i, (k, v) in enumerate(kv):
            cache.update(k, v, i)
        return cache

    def _check_plain(self, cache: Any) -> None:
        if any(getattr(lay, "is_sliding", False) for lay in cache.layers):
            raise NotImplementedError("forking a sliding-window cache is not supported")

    def fork(self, cache: Any, keep: Optional[int] = None) -> Any:
        self._check_plain(cache)
        kv = self._layers(cache)
        if keep is not None:
            kv = [(k[..., :keep, :], v[..., :keep, :]) for k, v in kv]
        return self._build(kv)

    def repeat(self, cache: Any, n: int) -> Any:
        self._check_plain(cache)
        kv = [(k.repeat_interleave(n, dim=0), v.repeat_interleave(n, dim=0)) for k, v in self._layers(cache)]
        return self._build(kv)

    def select(self, cache: Any, rows: torch.Tensor) -> Any:
        self._check_plain(cache)
        rows = rows.to(self.device)
        kv = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self._layers(cache)]
        return self._build(kv)

    def stack(self, parts: list[tuple[Any, int]]) -> Any:
        layers = []
        for cache, _ in parts:
            self._check_plain(cache)
            kv = self._layers(cache)
            if kv and kv[0][0].shape[0] != 1:
                raise ValueError("stack takes batch-1 caches")
            layers.append(kv)
        keeps = [int(n) for _, n in parts]
        out = []
        for i in range(len(layers[0])):
            out.append(_stack_rows([lay[i] for lay in layers], keeps))
        return self._build(out)

    def cache_bytes(self, cache: Any) -> int:
        total = 0
        for lay in cache.layers:
            for name in ("keys", "values"):
                t = getattr(lay, name, None)
                if torch.is_tensor(t):
                    total += t.numel() * t.element_size()
        return total


_WARNED: set[str] = set()


EXACT_PATHS = ("fast", "standard")  # int8 (engine/lm/quantized.py) is reduced precision


def get_forward(lm: LoadedModel, *, exact: bool = False) -> Forward:
    """The forward for ``lm``: the lean fast path when chosen and supported, else standard;
    ``int8`` is the reduced-precision decode path (inexact, chat and sampling only).
    ``exact=True`` (scoring: AdvTok, log-likelihood rewards) never returns an inexact forward:
    when ``lm.engine_path`` is inexact it gets the exact lean forward instead.
    Cached on the LoadedModel so every caller shares one instance (and its weights views)."""
    want = getattr(lm, "engine_path", "fast")
    if exact and want not in EXACT_PATHS:
        ex = getattr(lm, "_exact_forward", None)
        if ex is None or getattr(ex, "model", None) is not lm.model:
            ex = lm._exact_forward = _build_forward(lm, "fast")
        return ex
    cached = getattr(lm, "_forward", None)
    if cached is not None and getattr(lm, "_forward_path", None) == want:
        return cached
    fwd = _build_forward(lm, want)
    lm._forward = fwd
    lm._forward_path = want
    return fwd


def _build_forward(lm: LoadedModel, want: str) -> Forward:
    fwd: Forward = StandardForward(lm.model)
    if want == "int8":
        from engine.lm import quantized

        q = quantized.make_int8_forward(lm.model)
        if q is not None:
            return q
        if lm.name not in _WARNED:
            _WARNED.add(lm.name)
            log.info("int8 decode path unavailable for %s; using the exact lean forward", lm.name)
        want = "fast"
    if want == "fast":
        from engine.lm import fastpath

        lean = fastpath.make_lean_forward(lm.model)
        if lean is not None:
            fwd = lean
        elif lm.name not in _WARNED:
            _WARNED.add(lm.name)
            log.info("fast path does not support %s (%s); using the standard forward",
                     lm.name, fastpath.unsupported_reason(lm.model))
    return fwd


def is_exact(fwd: Any) -> bool:
    """False for a reduced-precision forward (its outputs only approximate the model's)."""
    return bool(getattr(fwd, "exact", True))
