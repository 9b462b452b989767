"""KV eviction with layer budgets from window attention (a CAKE-style re-implementation).

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

CAKE (Qin et al., ICLR 2025) gives each layer a share of the total KV budget from how its
attention behaves over the last ``w`` prompt queries: spatial dispersion (entropy H of the
window-averaged attention) and temporal shift (variance V of attention across the window's
queries), preference P_l = H^(1/τ1) · V^(1/τ2). Inside a layer, prompt keys are scored by
mean + γ·variance of the window's attention to them (GQA-averaged per KV head, smoothed by
average pooling); each KV head keeps its top B_l prefix keys plus the window.

This re-implementation does not patch attention: a forward hook on every attention module
recomputes the window's queries (q_proj [+ q_norm] + RoPE with the layer's own cos/sin) and
their softmax attention over the keys just written to the cache. Differences from the paper:
budgets are set after the whole prefill (no layer-by-layer cascade), so the transient peak is the
full prompt's KV (reported); during decoding each layer stays at B_l + w tokens by dropping the
lowest-scored key outside the window, where a key's score grows by the attention each decode
query pays it (H2O-style accumulation on top of the prefill score).

Same total budget as the sinks row: ``budget`` tokens per layer on average (sinks + window of
that row), i.e. ``budget · layers`` (token, layer) entries. Batch 1, q_len 1 decode,
``attention_mask=None`` and true position ids (layers have different lengths: no shared mask).
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F

from engine.errors import InputError
from .base import GenState, Query
from .kv_evict_sinks import EvictingMethod, _int_param
from .params import reject_unknown


@dataclass
class _LayerState:
    scores: Optional[torch.Tensor] = None  # (kv_heads, n) score of every cached key
    budget: Optional[int] = None  # prefix keys kept (B_l), window excluded
    entropy: float = 0.0
    variance: float = 0.0


@dataclass
class _CakeState:
    layers: dict[int, _LayerState] = field(default_factory=dict)
    prefilled: bool = False


def _attention_modules(model: Any) -> list[Any]:
    """Decoder attention modules in layer order (they carry ``layer_idx``)."""
    mods = [m for m in model.modules()
            if hasattr(m, "q_proj") and hasattr(m, "layer_idx") and hasattr(m, "head_dim")]
    return sorted(mods, key=lambda m: m.layer_idx)


def window_attention(module: Any, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     keys: torch.Tensor, w: int) -> torch.Tensor:
    """Softmax attention (kv_heads, w, n) of the last ``w`` queries of ``hidden`` (1, T, H) over
    the cached ``keys`` (1, kv_heads, n, d) (whose last T entries are these tokens), causal,
    averaged over the query heads sharing each KV head."""
    rope = sys.modules[type(module).__module__].apply_rotary_pos_emb
    d = module.head_dim
    hs = hidden[:, -w:]
    q = module.q_proj(hs).view(1, hs.shape[1], -1, d)
    if getattr(module, "q_norm", None) is not None:
        q = module.q_norm(q)
    q = q.transpose(1, 2)  # (1, H, w, d)
    q, _ = rope(q, q, cos[:, -w:], sin[:, -w:])
    kvh, n = keys.shape[1], keys.shape[2]
    groups = q.shape[1] // kvh
    k = keys[0].float().repeat_interleave(groups, dim=0)  # (H, n, d)
    s = torch.matmul(q[0].float(), k.transpose(1, 2)) * module.scaling  # (H, w, n)
    wq = s.shape[1]
    qpos = torch.arange(n - wq, n, device=s.device).view(-1, 1)
    s = s.masked_fill(torch.arange(n, device=s.device).view(1, -1) > qpos, float("-inf"))
    a = torch.softmax(s, dim=-1)
    return a.view(kvh, groups, wq, n).mean(1)


def layer_preference(a: torch.Tensor, n_prefix: int) -> tuple[float, float]:
    """(entropy, variance) of window attention ``a`` (kv_heads, w, n) over the prefix keys."""
    p = a[..., :n_prefix]
    mean = p.mean(dim=(0, 1))
    dist = mean / mean.sum().clamp_min(1e-12)
    ent = float(-(dist * dist.clamp_min(1e-12).log()).sum())
    var = float(p.var(dim=1, unbiased=False).sum(-1).mean()) if p.shape[1] > 1 else 0.0
    return ent, var


def key_scores(a: torch.Tensor, gamma: float, pool: int) -> torch.Tensor:
    """mean + γ·variance over the window queries, average-pooled along keys: (kv_heads, n)."""
    sc = a.mean(1) + gamma * (a.var(1, unbiased=False) if a.shape[1] > 1 else 0.0)
    if pool > 1:
        sc = F.avg_pool1d(sc.unsqueeze(1), kernel_size=pool, stride=1, padding=pool // 2,
                          count_include_pad=False).squeeze(1)[..., :a.shape[-1]]
    return sc


def split_budget(prefs: list[float], total: int, caps: list[int]) -> list[int]:
    """Integer budgets ∝ ``prefs`` summing to min(total, sum(caps)), none above its cap
    (surplus from capped layers goes to the others, largest remainders first)."""
    n = len(prefs)
    total = min(total, sum(caps))
    out = [0] * n
    free = list(range(n))
    left = total
    while left > 0 and free:
        w = [max(prefs[i], 1e-12) for i in free]
        s = sum(w)
        share = {i: left * wi / s for i, wi in zip(free, w)}
        capped = [i for i in free if out[i] + share[i] >= caps[i]]
        if capped:
            for i in capped:
                left -= caps[i] - out[i]
                out[i] = caps[i]
            free = [i for i in free if i not in capped]
            continue
        base = {i: int(math.floor(share[i])) for i in free}
        for i in free:
            out[i] += base[i]
        rest = left - sum(base.values())
        for i in sorted(free, key=lambda i: share[i] - base[i], reverse=True)[:rest]:
            out[i] += 1
        left = 0
    return out


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Keep positions ``idx`` (kv_heads, m) of ``t`` (1, kv_heads, n, d), per head."""
    return torch.gather(t, 2, idx.unsqueeze(0).unsqueeze(-1).expand(1, -1, -1, t.shape[-1])).contiguous()


class CakeEviction(EvictingMethod):
    """CAKE-style: per-layer budgets from window-attention entropy/variance, keys by mean+γ·var."""

    name = "evict-cake"
    label = "KV eviction: layer budgets from window attention (CAKE-style re-implementation)"

    def __init__(self, budget: int = 128, window: int = 32, gamma: float = 200.0,
                 tau1: float = 1.0, tau2: float = 1.0, pool: int = 5, **params: Any):
        reject_unknown(self.name, params, ["budget", "window", "gamma", "tau1", "tau2", "pool"])
        budget = _int_param("budget", budget, 1)
        window = _int_param("window", window, 1)
        pool = _int_param("pool", pool, 1)
        if window >= budget:
            raise InputError(f"window ({window}) must be smaller than the per-layer budget ({budget})")
        for nm, v in (("gamma", gamma), ("tau1", tau1), ("tau2", tau2)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
                raise InputError(f"{nm} must be a finite number >= 0 (got {v!r})")
        if tau1 == 0 or tau2 == 0:
            raise InputError("tau1 and tau2 must be > 0")
        super().__init__(budget=budget, window=window, gamma=gamma, tau1=tau1, tau2=tau2,
                         pool=pool)
        self.budget, self.window, self.gamma = budget, window, float(gamma)
        self.tau1, self.tau2, self.pool = float(tau1), float(tau2), pool

    # ---- state and hooks --------------------------------------------------------------------
    def new_state(self, lm: LoadedModel, q: Query, prompt_ids: list[int]) -> GenState:
        st = super().new_state(lm, q, prompt_ids)
        st.info["_cake"] = _CakeState()
        return st

    def feed(self, lm: LoadedModel, st: GenState, ids: list[int], keep: int = 1) -> torch.Tensor:
        cake: _CakeState = st.info["_cake"]
        mods = _attention_modules(lm.model)
        if not mods:
            raise InputError(f"{getattr(lm, 'name', 'model')}: no attention modules with q_proj "
                             "found; CAKE-style eviction needs them")
        handles = [m.register_forward_hook(self._hook(st, cake), with_kwargs=True) for m in mods]
        try:
            return super().feed(lm, st, ids, keep)
        finally:
            for h in handles:
                h.remove()

    def _hook(self, st: GenState, cake: _CakeState):
        def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            cos, sin = kwargs["position_embeddings"]
            lay = st.cache.layers[module.layer_idx]
            ls = cake.layers.setdefault(module.layer_idx, _LayerState())
            with torch.inference_mode():
                t = hidden.shape[1]
                a = window_attention(module, hidden, cos, sin, lay.keys, min(self.window, t))
                n = lay.keys.shape[-2]
                if not cake.prefilled:
                    n_prefix = max(n - a.shape[1], 1)
                    ls.entropy, ls.variance = layer_preference(a, n_prefix)
                    ls.scores = key_scores(a, self.gamma, self.pool)
                else:  # decode: accumulate the new queries' attention; new keys start at 0
                    old = ls.scores
                    pad = torch.zeros(old.shape[0], n - old.shape[1], dtype=old.dtype, device=old.device)
                    ls.scores = torch.cat([old, pad], 1) + a.sum(1)
        return hook

    # ---- eviction ---------------------------------------------------------------------------
    def evict(self, lm: LoadedModel, st: GenState) -> int:
        cake: _CakeState = st.info["_cake"]
        layers = list(st.cache.layers)
        dropped = 0
        if not cake.prefilled:
            cake.prefilled = True
            prefs = []
            for i in range(len(layers)):
                ls = cake.layers[i]
                prefs.append((ls.entropy ** (1 / self.tau1)) * (ls.variance ** (1 / self.tau2)))
            # B_l counts prefix keys for the whole generation (a short prompt may leave room
            # that decoding fills), so the total equals the sinks row's budget · layers
            total = (self.budget - self.window) * len(layers)
            budgets = split_budget(prefs, total, [total] * len(layers))
            st.info["layer_budgets"] = budgets
            st.info["layer_preference"] = [float(f"{p:.4g}") for p in prefs]
            for i, lay in enumerate(layers):
                cake.layers[i].budget = budgets[i]
                dropped += self._shrink(lay, cake.layers[i], budgets[i] + self.window)
        else:
            for i, lay in enumerate(layers):
                dropped += self._shrink(lay, cake.layers[i], cake.layers[i].budget + self.window)
        st.info["kv_bytes_per_layer"] = [
            int(l.keys.numel() * l.keys.element_size() + l.values.numel() * l.values.element_size())
            for l in layers]
        return dropped

    def _shrink(self, lay: Any, ls: _LayerState, size: int) -> int:
        """Keep the top-(size - window) prefix keys per KV head plus the window."""
        n = lay.keys.shape[-2]
        if n <= size:
            return 0
        w = min(self.window, n)
        keep_prefix = size - w
        pre = ls.scores[:, :n - w]
        top = torch.topk(pre, keep_prefix, dim=-1).indices.sort(dim=-1).values if keep_prefix else \
            pre[:, :0].long()
        win = torch.arange(n - w, n, device=top.device).expand(top.shape[0], w)
        idx = torch.cat([top, win], dim=-1)
        lay.keys = _gather(lay.keys, idx)
        lay.values = _gather(lay.values, idx)
        ls.scores = torch.gather(ls.scores, 1, idx)
        return n - size

    def run(self, lm: LoadedModel, q: Query, max_new_tokens: int, *, cancel: Any = None,
            sampling: Any = None, fixed_length: bool = False):
        out = super().run(lm, q, max_new_tokens, cancel=cancel, sampling=sampling,
                              fixed_length=fixed_length)
        out.extra.pop("_cake", None)
        return out
