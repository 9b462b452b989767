"""KV eviction scored by the prompt's last queries ("observation window"): CAKE, and SnapKV and
PyramidKV beside it as its natural ablations (same scores machinery; uniform or pyramid-shaped
layer budgets instead of CAKE's measured ones; no decode-time eviction).

CAKE (Qin et al., ICLR 2025), as its paper and reference code compute it:

- Window attention: the last ``w`` prompt queries' softmax attention over every key, causal
  inside the window, *per query head* (GQA keys repeated).
- Layer preference P = H^(1/τ1) · V^(1/τ2) from the window's attention to the prefix keys (all
  but the last ``w``): H = −Σ a·log(a + 1e-10) summed over heads, window rows and keys (not
  averaged, not renormalised); V = the (unbiased) variance over the window rows of each
  (head, key), summed over heads and keys.
- Key score: mean + γ·variance (unbiased) over the window rows, prefix keys only, average-pooled
  along keys (kernel ``pool``, zero padding counted), then averaged over the query heads that
  share a KV head.
- Budgets: the total (budget − w)·L prefix entries split ∝ P; each layer capped at its prefix
  length, the excess spread evenly over the uncapped layers, then the total restored by even
  steps (the reference's integer adjustment).
- No prefill eviction while the prompt is at most budget + w tokens (the reference's test); each
  layer then keeps the uniform budget − w prefix entries for decoding.
- Decoding: once a layer holds more than B_l + w entries, the *current* query's attention over
  its prefix entries (pooled, GQA-averaged; no accumulation, no variance) picks the B_l to keep,
  plus the last w.

Where this differs from the reference: budgets are set after the whole prefill (the reference's
default, non-cascading mode does the same, at its last layer), so the prefill's peak is the full
prompt's KV (reported); the decode rule runs after a step's forward, so a step attends over the
cache the previous step left (the reference evicts inside the attention call, before attending).

SnapKV (Li et al. 2024) as kvpress's SnapKVPress scores it: the window's mean attention (no
variance), average-pooled, GQA-averaged; every layer keeps budget − w prefix entries + the window;
nothing is evicted during decoding, so the cache grows by one entry per generated token.
PyramidKV (Cai et al. 2024): SnapKV's scores with budgets falling linearly from the first layer
to the last (KVCache-Factory's formula: smallest = average/β, largest = 2·average − smallest;
uniform when that does not fit the prompt; budgets count prefix entries, the window comes on top).
Both leave a prompt of at most ``budget`` tokens whole.

This re-implementation does not patch attention: a forward hook on every attention module
recomputes the window's queries (q_proj [+ q_norm] + RoPE with the layer's own cos/sin) and
their attention over the keys just written to the cache. Batch 1, true position ids; layers
have different lengths, so each attention module gets a mask built for its own cache layer
(``EvictingMethod.feed``, kv_evict_sinks.py).
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
from .kv_evict_sinks import EvictingMethod, _int_param, attention_modules
from .params import reject_unknown

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


@dataclass
class _LayerState:
    scores: Optional[torch.Tensor] = None  # (kv_heads, n_prefix) prefill score of each prefix key
    budget: Optional[int] = None  # prefix keys kept (B_l), window excluded
    entropy: float = 0.0
    variance: float = 0.0
    last_attention: Optional[torch.Tensor] = None  # (H, 1, n) the current decode query's


@dataclass
class _WindowState:
    layers: dict[int, _LayerState] = field(default_factory=dict)
    prefilled: bool = False


_attention_modules = attention_modules


def window_attention(module: Any, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     keys: torch.Tensor, w: int) -> torch.Tensor:
    """Softmax attention (H, w, n) of the last ``w`` queries of ``hidden`` (1, T, hidden) over the
    cached ``keys`` (1, kv_heads, n, d) (whose last T entries are these tokens), causal, one row
    block per query head."""
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
    return torch.softmax(s, dim=-1)


def layer_preference(a: torch.Tensor, n_prefix: int) -> tuple[float, float]:
    """CAKE's (entropy, variance) of window attention ``a`` (H, w, n) over the prefix keys:
    both summed over heads and keys (variance over the window rows, unbiased)."""
    p = a[..., :n_prefix].float()
    ent = float(-(p * torch.log(p + 1e-10)).sum())
    var = float(p.var(dim=1, unbiased=True).sum()) if p.shape[1] > 1 else 0.0
    return ent, var


def _pool_gqa(sc: torch.Tensor, pool: int, kvh: int) -> torch.Tensor:
    """Average-pool (H, n) scores along keys (zero padding counted, as avg_pool1d does by
    default), then average the query heads of each KV head: (kv_heads, n)."""
    h, n = sc.shape
    if pool > 1:
        sc = F.avg_pool1d(sc.unsqueeze(1), kernel_size=pool, stride=1, padding=pool // 2).squeeze(1)[:, :n]
    return sc.reshape(kvh, h // kvh, n).mean(1)


def key_scores(a: torch.Tensor, n_prefix: int, *, gamma: float, pool: int, kvh: int) -> torch.Tensor:
    """Scores (kv_heads, n_prefix) of the prefix keys: mean + γ·variance (unbiased) over the
    window rows (γ = 0: SnapKV's mean), pooled, GQA-averaged."""
    p = a[..., :n_prefix]
    sc = p.mean(1)
    if gamma and p.shape[1] > 1:
        sc = sc + gamma * p.var(1, unbiased=True)
    return _pool_gqa(sc, pool, kvh)


def adjust_budgets(raw: list[float], total: int, cap: int) -> list[int]:
    """CAKE's integer layer budgets from proportional shares ``raw``: truncate, cap at ``cap``
    (the prefix length), spread the excess evenly over the layers below the cap (the first ones
    get the remainder), then restore ``total`` by even steps over the layers that can move. The
    reference spreads once and clamps again when it evicts (losing what went over); here the
    spreading repeats until every layer is within its cap, so the total is kept."""
    b = [min(int(x), cap) for x in raw]
    total = min(total, cap * len(b))

    def spread(amount: int, sign: int) -> int:
        """Move ``amount`` entries in even steps (up to the cap, or down to 1); returns the rest."""
        while amount > 0:
            movable = [i for i, v in enumerate(b) if (v < cap if sign > 0 else v > 1)]
            if not movable:
                break
            per, rem = divmod(amount, len(movable))
            for j, i in enumerate(movable):
                want = per + (1 if j < rem else 0)
                room = cap - b[i] if sign > 0 else b[i] - 1
                step = min(want, room)
                b[i] += sign * step
                amount -= step
        return amount

    spread(sum(max(int(x) - cap, 0) for x in raw), 1)
    diff = total - sum(b)
    if diff:
        spread(abs(diff), 1 if diff > 0 else -1)
    return b


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


def pyramid_budgets(avg: int, layers: int, n_prefix: int, beta: float) -> list[int]:
    """PyramidKV's prefix budgets (the window comes on top, as in KVCache-Factory), largest at
    layer 0, falling linearly; ``avg`` per layer on average. Uniform when the pyramid does not
    fit the prefix."""
    lo = avg / beta
    hi = 2 * avg - lo
    if hi > n_prefix:
        hi = n_prefix
        lo = 2 * avg - hi
    if layers < 2 or not (n_prefix >= hi >= lo >= 0):
        return [min(avg, n_prefix)] * layers
    step = (hi - lo) / (layers - 1)
    return [min(n_prefix, int(round(hi - i * step))) for i in range(layers)]


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Keep positions ``idx`` (kv_heads, m) of ``t`` (1, kv_heads, n, d), per head."""
    return torch.gather(t, 2, idx.unsqueeze(0).unsqueeze(-1).expand(1, -1, -1, t.shape[-1])).contiguous()


def _check_number(name: str, v: Any, *, positive: bool = False) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0 \
            or (positive and v == 0):
        raise InputError(f"{name} must be a finite number {'> 0' if positive else '>= 0'} (got {v!r})")
    return float(v)


class _WindowEviction(EvictingMethod):
    """Shared machinery: the window-attention hook, prefill budgets, keeping top keys + window."""

    decode_rule = False     # CAKE evicts while decoding; SnapKV / PyramidKV do not
    gamma = 0.0

    def __init__(self, budget: int = 128, window: int = 32, pool: int = 5, **params: Any):
        budget = _int_param("budget", budget, 2)
        window = _int_param("window", window, 1)
        pool = _int_param("pool", pool, 1)
        if window >= budget:
            raise InputError(f"window ({window}) must be smaller than the per-layer budget ({budget})")
        super().__init__(budget=budget, window=window, pool=pool, **params)
        self.budget, self.window, self.pool = budget, window, pool

    # ---- state and hooks --------------------------------------------------------------------
    def new_state(self, lm: LoadedModel, q: Query, prompt_ids: list[int]) -> GenState:
        st = super().new_state(lm, q, prompt_ids)
        st.info["_win"] = _WindowState()
        return st

    def feed(self, lm: LoadedModel, st: GenState, ids: list[int], keep: int = 1) -> torch.Tensor:
        ws: _WindowState = st.info["_win"]
        if ws.prefilled and not self.decode_rule:
            return super().feed(lm, st, ids, keep)
        mods = _attention_modules(lm.model)
        if not mods:
            raise InputError(f"{getattr(lm, 'name', 'model')}: no attention modules with q_proj "
                             f"found; {self.name} needs them")
        handles = [m.register_forward_hook(self._hook(st, ws), with_kwargs=True) for m in mods]
        try:
            return super().feed(lm, st, ids, keep)
        finally:
            for h in handles:
                h.remove()

    def _hook(self, st: GenState, ws: _WindowState):
        def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            cos, sin = kwargs["position_embeddings"]
            lay = st.cache.layers[module.layer_idx]
            ls = ws.layers.setdefault(module.layer_idx, _LayerState())
            with torch.inference_mode():
                t = hidden.shape[1]
                if not ws.prefilled:
                    w = min(self.window, t)
                    a = window_attention(module, hidden, cos, sin, lay.keys, w)
                    n_prefix = lay.keys.shape[-2] - w
                    if n_prefix > 0:
                        ls.entropy, ls.variance = layer_preference(a, n_prefix)
                        ls.scores = key_scores(a, n_prefix, gamma=self.gamma, pool=self.pool,
                                               kvh=lay.keys.shape[1])
                else:  # CAKE's decode rule: the current query's attention
                    ls.last_attention = window_attention(module, hidden, cos, sin, lay.keys, 1)
        return hook

    # ---- eviction ---------------------------------------------------------------------------
    def prefill_budgets(self, ws: _WindowState, layers: int, n_prefix: int) -> list[int]:
        raise NotImplementedError

    def fits(self, n_prompt: int) -> bool:
        """No prefill eviction for a prompt this short."""
        return n_prompt <= self.budget

    def evict(self, lm: LoadedModel, st: GenState) -> int:
        ws: _WindowState = st.info["_win"]
        layers = list(st.cache.layers)
        dropped = 0
        if not ws.prefilled:
            ws.prefilled = True
            n = layers[0].keys.shape[-2]
            uniform = [self.budget - self.window] * len(layers)
            if self.fits(n) or any(ws.layers.get(i, _LayerState()).scores is None
                                   for i in range(len(layers))):
                budgets = uniform
                st.info["prefill_evicted"] = False
            else:
                budgets = self.prefill_budgets(ws, len(layers), n - min(self.window, n))
                st.info["prefill_evicted"] = True
                for i, lay in enumerate(layers):
                    dropped += self._keep(lay, ws.layers[i].scores, budgets[i])
            for i in range(len(layers)):
                ws.layers.setdefault(i, _LayerState()).budget = budgets[i]
                ws.layers[i].scores = None  # prefill scores are spent
            st.info["layer_budgets"] = budgets
        elif self.decode_rule:
            for i, lay in enumerate(layers):
                ls = ws.layers[i]
                n = lay.keys.shape[-2]
                if n > ls.budget + self.window and ls.last_attention is not None:
                    w = self.window
                    a = self._in_order(lay, ls.last_attention)
                    sc = _pool_gqa(a[:, 0, :n - w], self.pool, lay.keys.shape[1])
                    dropped += self._keep(lay, sc, ls.budget)
                ls.last_attention = None
        st.info["kv_bytes_per_layer"] = [
            int(l.keys.numel() * l.keys.element_size() + l.values.numel() * l.values.element_size())
            for l in layers]
        return dropped

    def _keep(self, lay: Any, scores: torch.Tensor, keep_prefix: int) -> int:
        """Keep the top ``keep_prefix`` prefix keys per KV head (by ``scores`` over the prefix)
        plus the last ``window`` entries; returns the entries dropped per head."""
        n = lay.keys.shape[-2]
        w = min(self.window, n)
        n_prefix = n - w
        keep_prefix = min(keep_prefix, n_prefix)
        if keep_prefix >= n_prefix:
            return 0
        pre = scores[:, :n_prefix]
        # the highest scores; equal scores go to the earlier position (a stable sort: topk's
        # choice among ties is unspecified and could differ between two layouts of one cache)
        top = (torch.sort(pre, dim=-1, descending=True, stable=True).indices[:, :keep_prefix]
               .sort(dim=-1).values if keep_prefix else pre[:, :0].long())
        win = torch.arange(n - w, n, device=top.device).expand(top.shape[0], w)
        self._apply_keep(lay, torch.cat([top, win], dim=-1))
        return n_prefix - keep_prefix

    def _in_order(self, lay: Any, a: torch.Tensor) -> torch.Tensor:
        """Attention ``a`` (H, q, n) over ``lay``'s entries, in the order the tokens came (what
        the window, the pooling and ``_keep``'s indices refer to). Here the cache holds them in
        that order; the hybrid row (kv_hybrid.py) reuses evicted slots and reorders."""
        return a

    def _apply_keep(self, lay: Any, idx: torch.Tensor) -> None:
        """Make ``lay`` hold only entries ``idx`` (KV heads, m; ascending per head, indices in
        the order the tokens came): gathered into new tensors, so the evicted entries' bytes are
        freed. The hybrid row (kv_hybrid.py) keeps them inside its reserved buffer instead."""
        lay.keys = _gather(lay.keys, idx)
        lay.values = _gather(lay.values, idx)

    def run(self, lm: LoadedModel, q: Query, max_new_tokens: int, *, cancel: Any = None,
            sampling: Any = None, fixed_length: bool = False):
        out = super().run(lm, q, max_new_tokens, cancel=cancel, sampling=sampling,
                          fixed_length=fixed_length)
        out.extra.pop("_win", None)
        return out


class CakeEviction(_WindowEviction):
    """CAKE: layer budgets from window-attention dispersion and shift, keys by mean + γ·var,
    the current query's attention while decoding."""

    name = "evict-cake"
    label = "KV eviction: CAKE (layer budgets from window attention, decode-time eviction)"
    simplification = ("budgets after the whole prefill (prefill peak = the full prompt's KV); the "
                      "decode rule evicts after a step instead of inside its attention; scores "
                      "recomputed by a hook, not a patched attention")
    decode_rule = True

    def __init__(self, budget: int = 128, window: int = 32, gamma: float = 200.0,
                 tau1: float = 1.0, tau2: float = 1.0, pool: int = 5, **params: Any):
        reject_unknown(self.name, params, ["budget", "window", "gamma", "tau1", "tau2", "pool"])
        gamma = _check_number("gamma", gamma)
        tau1 = _check_number("tau1", tau1, positive=True)
        tau2 = _check_number("tau2", tau2, positive=True)
        super().__init__(budget=budget, window=window, pool=pool, gamma=gamma, tau1=tau1, tau2=tau2)
        self.gamma, self.tau1, self.tau2 = gamma, tau1, tau2

    def fits(self, n_prompt: int) -> bool:
        return n_prompt <= self.budget + self.window  # the reference's test

    def prefill_budgets(self, ws: _WindowState, layers: int, n_prefix: int) -> list[int]:
        prefs = [(ws.layers[i].entropy ** (1 / self.tau1)) * (ws.layers[i].variance ** (1 / self.tau2))
                 for i in range(layers)]
        total = (self.budget - self.window) * layers
        s = sum(prefs)
        raw = [p / s * total for p in prefs] if s > 0 else [total / layers] * layers
        self._last_prefs = prefs
        return adjust_budgets(raw, total, n_prefix)

    def evict(self, lm: LoadedModel, st: GenState) -> int:
        first = not st.info["_win"].prefilled
        out = super().evict(lm, st)
        if first and st.info.get("prefill_evicted"):
            st.info["layer_preference"] = [float(f"{p:.4g}") for p in self._last_prefs]
        return out


class SnapKV(_WindowEviction):
    """SnapKV: window mean attention, pooled; the same budget in every layer; prefill only."""

    name = "evict-snapkv"
    label = "KV eviction: SnapKV (window attention, uniform layer budgets, prefill only)"
    simplification = "kvpress's scoring (mean over the window, average pooling), not the paper's max pooling"

    def __init__(self, budget: int = 128, window: int = 32, pool: int = 5, **params: Any):
        reject_unknown(self.name, params, ["budget", "window", "pool"])
        super().__init__(budget=budget, window=window, pool=pool)

    def prefill_budgets(self, ws: _WindowState, layers: int, n_prefix: int) -> list[int]:
        return [min(self.budget - self.window, n_prefix)] * layers


class PyramidKV(_WindowEviction):
    """PyramidKV: SnapKV's scores, budgets falling linearly with depth; prefill only."""

    name = "evict-pyramidkv"
    label = "KV eviction: PyramidKV (SnapKV scores, pyramid layer budgets, prefill only)"
    simplification = "kvpress's scoring (mean over the window, average pooling)"

    def __init__(self, budget: int = 128, window: int = 32, pool: int = 5, beta: float = 20.0,
                 **params: Any):
        reject_unknown(self.name, params, ["budget", "window", "pool", "beta"])
        beta = _check_number("beta", beta, positive=True)
        if beta < 1:
            raise InputError(f"beta must be >= 1 (got {beta})")
        super().__init__(budget=budget, window=window, pool=pool, beta=beta)
        self.beta = beta

    def prefill_budgets(self, ws: _WindowState, layers: int, n_prefix: int) -> list[int]:
        return pyramid_budgets(self.budget - self.window, layers, n_prefix, self.beta)
