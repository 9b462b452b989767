"""A lean forward for Llama-family models (llama, mistral, qwen2) on CPU: the same :class:`Forward`
interface as the standard Hugging Face path, without its per-step overhead.

Why it is faster (a decode step of SmolLM2-135M is ~65 ms in HF, only ~20 ms of which is matmuls):
- weights are used where they lie: on CPU, Q/K/V and gate/up are fused by *adoption* — each
  group is concatenated once and the HF parameters are rebound to row blocks (views) of the
  result, so the model still holds each weight once and both paths read the same memory
  (``fuse=True`` makes counted copies instead; ``False`` keeps separate projections);
- few-row products (decode, batched rollouts) split each weight's output rows across the
  intra-op threads with one ``bmm`` over a view (one core cannot stream the weights fast enough);
- rotary tables are computed once, with the sign of ``rotate_half`` folded into the sine table, so
  RoPE is ``x*cos + roll(x)*sin`` on a table slice (no gather at unpadded batch 1);
- each cache is one preallocated K/V buffer per model, written in place; it grows by doubling;
- unpadded batch-1 decode builds no mask at all, and grouped-query attention at q_len 1 views the
  query heads as (kv_heads, group) so SDPA attends without repeating K/V (``decode_attention=
  "matmul"`` swaps SDPA for matmul/softmax/matmul there; measured in bench/decode.py);
- the HF parameters are re-checked (identity, storage, in-place version) whenever a sequence
  starts or several tokens are fed, so a method that prunes or swaps weights is seen (fused copies
  are rebuilt);
- logits only for the positions asked for (``keep``); ``hidden()`` + ``head()`` for scoring.

Results equal the standard path to fp32 rounding (tests assert atol 1e-4 on logits and identical
greedy tokens). Anything this module cannot reproduce exactly (other architectures, dynamic or
long RoPE, sliding windows, non-SiLU MLPs) makes :func:`make_lean_forward` return ``None`` and the
caller uses the standard path.

Cache sharing, copy-on-write: ``fork`` is O(1) — the fork shares its source's buffer and records
its own length. A buffer remembers its *frontier* (the furthest position any cache has written).
A cache writes in place only at positions at or beyond the frontier, which no other cache can
hold; a write below it (a fork continuing, or a source continuing after its fork already wrote)
first copies the writer's own prefix into a fresh buffer. So neither a fork nor its source is ever
corrupted by the other's later writes, and the common case — one cache decoding — never copies.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")
# RoPE variants whose frequencies do not depend on the sequence length: the table is exact.
STATIC_ROPE = ("default", "linear", "llama3", "yarn")
HEAD_MODES = ("exact", "chunked", "int8")
DECODE_ATTENTION = ("sdpa", "matmul")  # q_len-1 attention kernel; prefill always uses SDPA
FUSE_MODES = ("auto", "adopt", True, False)  # True: concatenated copies (HF weights untouched)
MATVEC = ("split", "linear")  # few-row products: output rows split across threads, or F.linear
SPLIT_MAX_ROWS = 32  # above this many rows a product is compute-bound and F.linear is threaded
_MIN_CAP = 64


def unsupported_reason(model: Any) -> Optional[str]:
    """Why the lean path cannot reproduce ``model`` exactly, or None when it can."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return "no config"
    mt = getattr(cfg, "model_type", None)
    if mt not in SUPPORTED_TYPES:
        return f"model_type {mt!r} (supported: {', '.join(SUPPORTED_TYPES)})"
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "layers") or not hasattr(model, "lm_head"):
        return "unexpected module layout"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r}"
    rope = getattr(cfg, "rope_parameters", None) or {}
    if isinstance(rope, dict) and rope and "rope_type" not in rope:
        return "per-layer-type RoPE parameters"
    rtype = rope.get("rope_type", "default") if isinstance(rope, dict) else "default"
    if rtype not in STATIC_ROPE:
        return f"RoPE type {rtype!r} (length-dependent)"
    rot = getattr(base, "rotary_emb", None)
    if rot is None or not hasattr(rot, "inv_freq"):
        return "no rotary embedding module"
    lt = getattr(cfg, "layer_types", None)
    if lt and any(t != "full_attention" for t in lt):
        return "sliding-window layers"
    sw = getattr(cfg, "sliding_window", None)
    if mt == "mistral" and sw is not None and sw < getattr(cfg, "max_position_embeddings", 0):
        return f"sliding window {sw}"
    if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "attn_logit_softcapping", None):
        return "logit softcapping"
    for lay in base.layers:
        a = getattr(lay, "self_attn", None)
        m = getattr(lay, "mlp", None)
        if a is None or m is None or not all(hasattr(a, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")) \
                or not all(hasattr(m, n) for n in ("gate_proj", "up_proj", "down_proj")):
            return "unexpected layer layout"
        if getattr(a, "q_norm", None) is not None or getattr(a, "k_norm", None) is not None:
            return "q/k norms"
    return None


def make_lean_forward(model: Any, *, fuse: Any = "auto", head_mode: str = "exact",
                      decode_attention: str = "sdpa", matvec: str = "split") -> Optional["LeanForward"]:
    """The lean forward for ``model``, or None (and one log line) when it is not supported."""
    why = unsupported_reason(model)
    if why is not None:
        log.debug("lean forward unsupported: %s", why)  # get_forward logs it once per model
        return None
    return LeanForward(model, fuse=fuse, head_mode=head_mode, decode_attention=decode_attention,
                       matvec=matvec)


@dataclass
class _Layer:
    ln1: torch.Tensor
    ln2: torch.Tensor
    wq: torch.Tensor
    wk: torch.Tensor
    wv: torch.Tensor
    bq: Optional[torch.Tensor]
    bk: Optional[torch.Tensor]
    bv: Optional[torch.Tensor]
    wqkv: Optional[torch.Tensor]
    bqkv: Optional[torch.Tensor]
    wo: torch.Tensor
    bo: Optional[torch.Tensor]
    wg: torch.Tensor
    wu: torch.Tensor
    wgu: Optional[torch.Tensor]
    bg: Optional[torch.Tensor]
    bu: Optional[torch.Tensor]
    wd: torch.Tensor
    bd: Optional[torch.Tensor]


class _Store:
    """K and V of every layer in one buffer each: (layers, batch, kv_heads, cap, head_dim)."""

    __slots__ = ("k", "v", "frontier")

    def __init__(self, k: torch.Tensor, v: torch.Tensor, frontier: int) -> None:
        self.k = k
        self.v = v
        self.frontier = frontier

    @property
    def cap(self) -> int:
        return int(self.k.shape[3])

    @property
    def batch(self) -> int:
        return int(self.k.shape[1])


class LeanCache:
    """A view of ``length`` positions of a (possibly shared) :class:`_Store`. Opaque to callers:
    use the owning :class:`LeanForward`'s methods."""

    __slots__ = ("store", "length", "batch")

    def __init__(self, store: Optional[_Store], length: int, batch: int) -> None:
        self.store = store
        self.length = length
        self.batch = batch

    def get_seq_length(self) -> int:  # same spelling as HF caches, for code that inspects them
        return self.length


def _bias(lin: Any) -> Optional[torch.Tensor]:
    b = getattr(lin, "bias", None)
    return b.detach() if b is not None else None


def _cat_bias(*bs: Optional[torch.Tensor], sizes: tuple[int, ...]) -> Optional[torch.Tensor]:
    if all(b is None for b in bs):
        return None
    ref = next(b for b in bs if b is not None)
    return torch.cat([b if b is not None else ref.new_zeros(n) for b, n in zip(bs, sizes)])


class LeanForward:
    """The Forward interface (see engine/lm/forward.py) implemented directly on the HF weights."""

    name = "fast"

    def __init__(self, model: Any, *, fuse: Any = "auto", head_mode: str = "exact",
                 decode_attention: str = "sdpa", matvec: str = "split") -> None:
        if decode_attention not in DECODE_ATTENTION:
            raise ValueError(f"decode_attention must be one of {DECODE_ATTENTION}")
        if matvec not in MATVEC:
            raise ValueError(f"matvec must be one of {MATVEC}")
        self.decode_attention = decode_attention
        self.matvec = matvec
        cfg = model.config
        base = model.model
        self.model = model
        self.config = cfg
        self.n_layers = len(base.layers)
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads)
        self.groups = self.n_heads // self.n_kv
        self.hidden_size = int(cfg.hidden_size)
        self.eps = float(cfg.rms_norm_eps)
        self.scale = self.head_dim ** -0.5
        self.dtype = base.embed_tokens.weight.dtype
        self.device = base.embed_tokens.weight.device
        if fuse not in FUSE_MODES:
            raise ValueError(f"fuse must be one of {FUSE_MODES}")
        if fuse == "auto":  # adopt on CPU (one copy of every weight); separate where weights are
            # spread or offloaded by accelerate (rebinding parameters would fight its hooks)
            devs = {p.device.type for p in model.parameters()}
            fuse = "adopt" if devs == {"cpu"} and not getattr(model, "hf_device_map", None) else False
        self.fused = fuse
        self._calls = 0
        self._load_weights()
        rot = base.rotary_emb
        self._inv_freq = rot.inv_freq.detach().to(self.device, torch.float32)
        self._rope_scale = float(getattr(rot, "attention_scaling", 1.0))
        self._cos = self._sin = torch.empty(0)
        self._build_rope(max(int(getattr(cfg, "max_position_embeddings", 2048) or 2048), 16))
        self.head_mode = "exact"
        self._head_q: Any = None
        self.set_head_mode(head_mode)

    # ---- weights -----------------------------------------------------------------------------
    def _signature(self) -> tuple:
        """Identity, storage and in-place version of every parameter: changes whenever a method
        edits or swaps weights, so the lean path never computes with stale ones."""
        return tuple((id(p), p.data_ptr(), p._version) for p in self.model.parameters())

    def _load_weights(self) -> None:
        """Reference the HF weights (no copy); with ``fuse``, concatenate QKV and gate/up."""
        model = self.model
        base = model.model
        fuse = self.fused
        self.embed = base.embed_tokens.weight.detach()
        self.norm = base.norm.weight.detach()
        self.w_head = model.lm_head.weight.detach()
        self.b_head = _bias(model.lm_head)
        self.extra_weight_bytes = 0  # bytes of weights this object holds beyond HF's own
        self._views: dict[tuple[int, int], tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
        self.layers: list[_Layer] = []
        qd, kd = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        for lay in base.layers:
            a, m = lay.self_attn, lay.mlp
            bq, bk, bv = _bias(a.q_proj), _bias(a.k_proj), _bias(a.v_proj)
            bg, bu = _bias(m.gate_proj), _bias(m.up_proj)
            wqkv = bqkv = wgu = None
            if fuse:  # before the weights are read below: adoption rebinds them
                adopt = fuse == "adopt"
                wqkv = self._fused([a.q_proj, a.k_proj, a.v_proj], adopt)
                bqkv = _cat_bias(bq, bk, bv, sizes=(qd, kd, kd))
                if bg is None and bu is None:
                    wgu = self._fused([m.gate_proj, m.up_proj], adopt)
                extra = [bqkv] if adopt else [wqkv, bqkv, wgu]
                for t in extra:
                    if t is not None:
                        self.extra_weight_bytes += t.numel() * t.element_size()
            wq, wk, wv = a.q_proj.weight.detach(), a.k_proj.weight.detach(), a.v_proj.weight.detach()
            wg, wu = m.gate_proj.weight.detach(), m.up_proj.weight.detach()
            self.layers.append(_Layer(
                ln1=lay.input_layernorm.weight.detach(), ln2=lay.post_attention_layernorm.weight.detach(),
                wq=wq, wk=wk, wv=wv, bq=bq, bk=bk, bv=bv, wqkv=wqkv, bqkv=bqkv,
                wo=a.o_proj.weight.detach(), bo=_bias(a.o_proj), wg=wg, wu=wu, wgu=wgu, bg=bg, bu=bu,
                wd=m.down_proj.weight.detach(), bd=_bias(m.down_proj)))
        if getattr(self, "head_mode", "exact") == "int8":
            self._head_q = _Int8Head(self.w_head, self.b_head)
        self._sig = self._signature()

    @staticmethod
    def _fused(mods: list[Any], adopt: bool) -> torch.Tensor:
        """The modules' weights stacked as one (ΣN, K) matrix.

        ``adopt``: without a second copy — when the weights already are consecutive row blocks of
        one buffer (adopted earlier, by this or another lean forward) that buffer is viewed as a
        whole; otherwise they are concatenated once and each module's weight is rebound to its
        row block of the result (a view), so the model holds each weight once and in-place edits
        by a method are seen by both paths. Without ``adopt``: a plain concatenated copy."""
        ws = [mod.weight.detach() for mod in mods]
        if not adopt:
            return torch.cat(ws)
        first = ws[0]
        k = first.shape[1]
        off, ok = first.storage_offset(), True
        for w in ws:
            ok = ok and w.is_contiguous() and w.shape[1] == k and w.storage_offset() == off \
                and w.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
            off += w.numel()
        rows = sum(w.shape[0] for w in ws)
        if ok:
            return first.as_strided((rows, k), (k, 1))
        # a reload may run inside inference mode: the new buffer must be an ordinary tensor, or a
        # method's later in-place edit of a weight (outside inference mode) would be refused
        with torch.inference_mode(False):
            fused = torch.cat(ws)
            start = 0
            for mod, w in zip(mods, ws):
                n = w.shape[0]
                mod.weight = torch.nn.Parameter(fused[start:start + n], requires_grad=False)
                start += n
        return fused

    # ---- rotary tables -----------------------------------------------------------------------
    def _build_rope(self, n: int) -> None:
        """cos and sign-folded sin tables for positions [0, n), computed as HF does (fp32)."""
        pos = torch.arange(n, device=self.device, dtype=torch.int64)
        freqs = pos[:, None].float() * self._inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self._rope_scale
        sin = emb.sin() * self._rope_scale
        h = self.head_dim // 2
        sin_signed = torch.cat((-sin[:, :h], sin[:, h:]), dim=-1)  # rotate_half's sign, folded in
        self._cos = cos.to(self.dtype)
        self._sin = sin_signed.to(self.dtype)

    def _rope_tables(self, past: int, t: int, position_ids: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) broadcastable to (B, T, heads, head_dim)."""
        top = past + t if position_ids is None else int(position_ids.max()) + 1
        if top > self._cos.shape[0]:
            self._build_rope(max(top, 2 * self._cos.shape[0]))
        if position_ids is None:
            return self._cos[past:past + t][None, :, None, :], self._sin[past:past + t][None, :, None, :]
        pid = position_ids.to(self.device)
        return self._cos[pid][:, :, None, :], self._sin[pid][:, :, None, :]

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # rotate_half(x) * sin == roll(x, d/2) * sin_signed, bit for bit
        return x * cos + torch.roll(x, self.head_dim // 2, dims=-1) * sin

    # ---- LM head -----------------------------------------------------------------------------
    def set_head_mode(self, mode: str) -> None:
        """``exact`` (fp32 matmul), ``chunked`` (same maths, vocabulary in blocks) or ``int8``
        (per-channel int8 weights, dynamic activation quantization: approximate, opt-in only)."""
        if mode not in HEAD_MODES:
            from engine.errors import InputError

            raise InputError(f"unknown LM-head mode {mode!r}: use one of {', '.join(HEAD_MODES)}")
        if mode == "int8" and self._head_q is None:
            self._head_q = _Int8Head(self.w_head, self.b_head)
        self.head_mode = mode

    @torch.inference_mode()
    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.head_mode == "int8":
            return self._head_q(hidden.float())
        if self.head_mode == "chunked":
            return _chunked_linear(hidden, self.w_head, self.b_head).float()
        return self._linear(hidden, self.w_head, self.b_head).float()

    # ---- matrix-vector products --------------------------------------------------------------
    def _linear(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``F.linear(x, w, b)``, with few-row products split across the intra-op threads.

        Why: a decode step is a chain of matrix-vector products, and on CPU ``F.linear`` runs a
        one-row product on one thread, streaming the weights at one core's bandwidth (measured
        here: 16 GB/s of a 47 GB/s machine). Viewing ``w`` (N, K) as P blocks of N/P output rows
        — a zero-copy view — and multiplying them with one ``bmm`` lets torch give each thread a
        block. Each output element is the same K-long dot product either way (tests check the
        logits against the standard path)."""
        p = self._parts
        k = x.shape[-1]
        rows = x.numel() // k if k else 0
        if p < 2 or self.matvec != "split" or not 0 < rows <= SPLIT_MAX_ROWS or x.device.type != "cpu":
            return F.linear(x, w, b)
        wv = self._split_view(w, p)
        if wv is None:
            return F.linear(x, w, b)
        n = w.shape[0]
        out = torch.bmm(x.reshape(1, rows, k).expand(p, rows, k), wv)  # (P, rows, N/P)
        if rows == 1:
            out = out.view(*x.shape[:-1], n)  # (P, 1, N/P) is already row-major over N
        else:
            out = out.transpose(0, 1).reshape(*x.shape[:-1], n)
        return out if b is None else out + b

    def _split_view(self, w: torch.Tensor, p: int) -> Optional[torch.Tensor]:
        """``w`` (N, K) as (P, K, N/P) blocks — a view, made once per weight (None: cannot split)."""
        key = (id(w), p)
        hit = self._views.get(key)
        if hit is not None and hit[0] is w:
            return hit[1]
        n, k = w.shape
        v = w.view(p, n // p, k).transpose(1, 2) if n % p == 0 and w.is_contiguous() else None
        self._views[key] = (w, v)
        return v

    @property
    def _parts(self) -> int:
        """Blocks per product: one per intra-op thread (at most 8)."""
        return min(torch.get_num_threads(), 8)

    # ---- caches ------------------------------------------------------------------------------
    def new_cache(self, batch: int = 1) -> LeanCache:
        return LeanCache(None, 0, batch)

    def _alloc(self, batch: int, cap: int, zero: bool = False) -> _Store:
        shape = (self.n_layers, batch, self.n_kv, cap, self.head_dim)
        make = torch.zeros if zero else torch.empty
        return _Store(make(shape, dtype=self.dtype, device=self.device),
                      make(shape, dtype=self.dtype, device=self.device), 0)

    def _reserve(self, cache: LeanCache, batch: int, t: int) -> _Store:
        """A store this cache may write positions [length, length+t) into (copy-on-write)."""
        p = cache.length
        st = cache.store
        need = p + t
        if st is None:
            cache.store = st = self._alloc(batch, max(_MIN_CAP, need))
            cache.batch = batch
            st.frontier = 0
        elif batch != st.batch:
            from engine.errors import InputError

            raise InputError(f"batch {batch} does not match the cache's batch {st.batch}")
        elif need > st.cap or p < st.frontier:
            cap = max(need, 2 * st.cap) if need > st.cap else st.cap
            new = self._alloc(batch, cap)
            if p:
                new.k[:, :, :, :p].copy_(st.k[:, :, :, :p])
                new.v[:, :, :, :p].copy_(st.v[:, :, :, :p])
            new.frontier = p
            cache.store = st = new
        st.frontier = need
        return st

    def cache_len(self, cache: LeanCache) -> int:
        return cache.length

    def fork(self, cache: LeanCache, keep: Optional[int] = None) -> LeanCache:
        n = cache.length if keep is None else int(keep)
        if n < 0 or n > cache.length:
            from engine.errors import InputError

            raise InputError(f"cannot fork {n} positions of a cache holding {cache.length}")
        return LeanCache(cache.store if n else None, n, cache.batch)

    def _copy_rows(self, cache: LeanCache, rows: torch.Tensor) -> LeanCache:
        n = cache.length
        st = cache.store
        b = int(rows.numel())
        if st is None or n == 0:
            return LeanCache(None, 0, b)
        new = self._alloc(b, max(_MIN_CAP, n + max(_MIN_CAP, n // 4)))
        new.k[:, :, :, :n].copy_(st.k[:, :, :, :n].index_select(1, rows))
        new.v[:, :, :, :n].copy_(st.v[:, :, :, :n].index_select(1, rows))
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
                new.k[:, u, :, L - n:L].copy_(c.store.k[:, 0, :, :n])
                new.v[:, u, :, L - n:L].copy_(c.store.v[:, 0, :, :n])
        return LeanCache(new, L, len(parts))

    def cache_bytes(self, cache: LeanCache) -> int:
        """Bytes of the K/V the cache holds (same figure as the standard path's DynamicCache)."""
        el = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.n_layers * cache.batch * self.n_kv * cache.length * self.head_dim * el

    def cache_allocated_bytes(self, cache: LeanCache) -> int:
        """Bytes of the buffer behind the cache (capacity included; shared with forks)."""
        st = cache.store
        return 0 if st is None else 2 * st.k.numel() * st.k.element_size()

    # ---- the forward -------------------------------------------------------------------------
    def _mask(self, b: int, past: int, t: int, attention_mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Boolean (B, 1, T, past+T) mask, True = attend; None when SDPA needs none."""
        s = past + t
        if attention_mask is None:
            if t == 1 or past == 0:
                return None  # decode needs no mask; a fresh prefill uses SDPA's is_causal
            i = torch.arange(t, device=self.device)[:, None] + past
            j = torch.arange(s, device=self.device)[None, :]
            return (j <= i)[None, None]
        am = attention_mask.to(self.device)
        if am.shape != (b, s):
            from engine.errors import InputError

            raise InputError(f"attention_mask has shape {tuple(am.shape)}, expected {(b, s)}")
        pad = am.bool()[:, None, None, :]
        if t == 1:
            # the query's own slot stays visible so a padded query never gets an all-masked row
            # (which would put NaN into the buffer); its output is ignored anyway
            pad = pad.clone()
            pad[..., past] = True
            return pad
        i = torch.arange(t, device=self.device)[:, None] + past
        j = torch.arange(s, device=self.device)[None, :]
        m = (j <= i)[None, None] & pad
        m |= (j == i)[None, None]
        return m

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
                   b: int, t: int, causal: bool) -> torch.Tensor:
        """q (B, T, H, D) rotated; k, v (B, KV, S, D) buffer views → (B, T, H*D)."""
        if t == 1:
            # GQA at q_len 1: the group's query heads become the query axis of their KV head,
            # so K/V are never repeated; mask (B, 1, 1, S) broadcasts over (KV, group)
            qg = q.reshape(b, self.n_kv, self.groups, self.head_dim)
            if self.decode_attention == "sdpa":
                o = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask, scale=self.scale)
            else:
                # three small ops instead of SDPA's kernel (an option; bench/decode.py measures it)
                s = torch.matmul(qg, k.transpose(-1, -2))
                s.mul_(self.scale)
                if mask is not None:
                    s.masked_fill_(~mask, float("-inf"))
                o = torch.matmul(torch.softmax(s, dim=-1), v)
            return o.reshape(b, 1, self.n_heads * self.head_dim)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, is_causal=causal,
                                           scale=self.scale, enable_gqa=self.groups > 1)
        return o.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)

    @torch.inference_mode()
    def hidden(self, ids: torch.Tensor, cache: LeanCache, *, position_ids: Optional[torch.Tensor] = None,
               attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        ids = ids.to(self.device)
        if ids.dim() != 2 or ids.shape[1] == 0:
            from engine.errors import InputError

            raise InputError(f"ids must be a non-empty (batch, tokens) tensor, got {tuple(ids.shape)}")
        b, t = ids.shape
        past = cache.length
        self._calls += 1
        # ~0.3-0.8 ms for 270 parameters: checked when a sequence starts, on every multi-token
        # call (prefill, a new chat turn, scoring) and every 32nd decode step — not every step
        if (t > 1 or past == 0 or self._calls % 32 == 0) and self._signature() != self._sig:
            self._load_weights()
        cos, sin = self._rope_tables(past, t, position_ids)
        mask = self._mask(b, past, t, attention_mask)
        causal = mask is None and t > 1
        st = self._reserve(cache, b, t)
        s = past + t
        nh, nkv, d = self.n_heads, self.n_kv, self.head_dim
        qd, kd = nh * d, nkv * d
        x = F.embedding(ids, self.embed)
        lin = self._linear
        for li, L in enumerate(self.layers):
            h = F.rms_norm(x, (self.hidden_size,), L.ln1, self.eps)
            if L.wqkv is not None:
                qkv = lin(h, L.wqkv, L.bqkv)
                # q and k are adjacent in the fused output: one RoPE over both (half the ops)
                qk = self._rope(qkv[..., :qd + kd].view(b, t, nh + nkv, d), cos, sin)
                q, k, v = qk[:, :, :nh], qk[:, :, nh:], qkv[..., qd + kd:]
            else:
                q, k, v = lin(h, L.wq, L.bq), lin(h, L.wk, L.bk), lin(h, L.wv, L.bv)
                q = self._rope(q.view(b, t, nh, d), cos, sin)
                k = self._rope(k.view(b, t, nkv, d), cos, sin)
            kb, vb = st.k[li], st.v[li]
            kb[:, :, past:s].copy_(k.transpose(1, 2))
            vb[:, :, past:s].copy_(v.view(b, t, nkv, d).transpose(1, 2))
            a = self._attention(q, kb[:, :, :s], vb[:, :, :s], mask, b, t, causal)
            x = x + lin(a, L.wo, L.bo)
            h = F.rms_norm(x, (self.hidden_size,), L.ln2, self.eps)
            if L.wgu is not None:
                gu = lin(h, L.wgu)
                g, u = gu.chunk(2, dim=-1)
            else:
                g, u = lin(h, L.wg, L.bg), lin(h, L.wu, L.bu)
            x = x + lin(F.silu(g) * u, L.wd, L.bd)
        cache.length = s
        return F.rms_norm(x, (self.hidden_size,), self.norm, self.eps)

    @torch.inference_mode()
    def logits(self, ids: torch.Tensor, cache: LeanCache, *, position_ids: Optional[torch.Tensor] = None,
               attention_mask: Optional[torch.Tensor] = None, keep: int = 1) -> torch.Tensor:
        h = self.hidden(ids, cache, position_ids=position_ids, attention_mask=attention_mask)
        if keep:
            h = h[:, -keep:]
        return self.head(h)

    def describe(self) -> str:
        return (f"lean forward · {self.n_layers} layers · {('fused (adopted, no copy)' if self.fused == 'adopt' else 'fused (copies)') if self.fused else 'separate'} "
                f"projections · matvec {self.matvec} ({self._parts} blocks) · head {self.head_mode} · "
                f"extra weights {self.extra_weight_bytes / 2**20:.1f} MiB")


def _chunked_linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], rows: int = 8192) -> torch.Tensor:
    """x @ w.T with the output (vocabulary) axis in blocks that stay in cache."""
    out = x.new_empty(*x.shape[:-1], w.shape[0])
    for i in range(0, w.shape[0], rows):
        out[..., i:i + rows] = F.linear(x, w[i:i + rows], None if b is None else b[i:i + rows])
    return out


class _Int8Head:
    """Per-output-channel symmetric int8 head weights with dynamic per-row activation scales.
    A quarter of the fp32 head's bytes; approximate, so only ever an explicit option."""

    def __init__(self, w: torch.Tensor, b: Optional[torch.Tensor]) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.ao.nn.quantized.dynamic import Linear as QLinear

            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
            lin.weight = torch.nn.Parameter(w.float(), requires_grad=False)
            if b is not None:
                lin.bias = torch.nn.Parameter(b.float(), requires_grad=False)
            lin.qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
            self.q = QLinear.from_float(lin)
        self.nbytes = w.numel() + (w.shape[0] * 8)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        return self.q(x.reshape(-1, shape[-1])).reshape(*shape[:-1], -1)
