"""A lean forward for Llama-family models (llama, mistral, qwen2) on CPU: the same :class:`Forward`
interface as the standard Hugging Face path, without its per-step overhead.

Why it is faster (a decode step of SmolLM2-135M is ~65 ms in HF, only ~20 ms of which is matmuls):
- weights are used where they lie: on CPU, Q/K/V and gate/up are fused by *adoption* — each
  group is concatenated once and the HF parameters are rebound to row blocks (views) of the
  result, so the model still holds each weight once and both paths read the same memory
  (``fuse=True`` makes counted copies instead; ``False`` keeps separate projections);
- few-row products (decode, batched rollouts) split each weight's output rows across the
  intra-op threads with one ``bmm`` over a view (one core cannot stream the weights fast enough);
- rotary tables are computed once, as per-position 2×2 rotations (``fastdecode.rope_table``), so
  RoPE is one multiply and one sum over a table slice (no gather at unpadded batch 1);
- each cache is one preallocated K/V buffer per model, written in place; it grows by doubling;
- an unmasked batch-1 decode step runs the compiled kernel of ``nativestep.py`` (the layer loop
  as one C function in one OpenMP region, docs/native-decode.md; same greedy tokens, logits
  within 1e-4, not bit-equal); any other decode step (few rows, a mask, no kernel, ``native=False``)
  runs :class:`fastdecode.DecodeStep`: buffers made once and written with ``out=``, residual adds
  folded into the products, 23 ops per layer;
- unpadded batch-1 decode builds no mask at all, and grouped-query attention at q_len 1 views the
  query heads as (kv_heads, group) so attention needs no repeated K/V (SDPA by default;
  ``decode_attention="matmul"`` swaps it for bmm/softmax/bmm there — ~1.5 µs a layer slower at two
  threads, measured unprofiled: the profiler inflates SDPA's cost, it counts its ~9 inner ops;
  bench/decode.py measures both);
- the HF parameters are re-checked (identity, storage, in-place version) whenever a sequence
  starts or several tokens are fed, so a method that prunes or swaps weights is seen (fused copies
  are rebuilt);
- logits only for the positions asked for (``keep``); ``hidden()`` + ``head()`` for scoring.

Results equal the standard path to fp32 rounding (tests assert atol 1e-4 on logits and identical
greedy tokens). Anything this module cannot reproduce exactly (other architectures, dynamic or
long RoPE, sliding windows, non-SiLU MLPs) makes :func:`make_lean_forward` return ``None`` and the
caller uses the standard path.

The pieces: this module (the support check, the forward, RoPE, attention, the LM head modes);
``fastweights.py`` (weight adoption/fusion and the split mat-vec, chunked and int8 kernels);
``fastcache.py`` (the K/V buffers, shared copy-on-write between forks); ``fastdecode.py`` (the
decode step in torch ops); ``nativestep.py`` (the compiled batch-1 step).
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Optional

import torch
import torch.nn.functional as F

from engine.errors import InputError
from engine.lm.fastcache import KVStore, LeanCache, LeanKV
from engine.lm.fastdecode import DecodeStep, Product, rope_table, step_products
from engine.lm.nativestep import NativeStep, make_native_step
from engine.lm.fastweights import (SPLIT_MAX_ROWS, Int8Head, LeanLayer, SplitLinear, chunked_linear,
                                   load_weights, weight_signature)

log = logging.getLogger(__name__)

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")
# RoPE variants whose frequencies do not depend on the sequence length: the table is exact.
STATIC_ROPE = ("default", "linear", "llama3", "yarn")
HEAD_MODES = ("exact", "chunked", "int8")
DECODE_ATTENTION = ("sdpa", "matmul")  # q_len-1 attention kernel; prefill always uses SDPA
FUSE_MODES = ("auto", "adopt", True, False)  # True: concatenated copies (HF weights untouched)


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
                      decode_attention: str = "sdpa", matvec: str = "split",
                      native: bool = True) -> Optional["LeanForward"]:
    """The lean forward for ``model``, or None (and one log line) when it is not supported."""
    why = unsupported_reason(model)
    if why is not None:
        log.debug("lean forward unsupported: %s", why)  # get_forward logs it once per model
        return None
    return LeanForward(model, fuse=fuse, head_mode=head_mode, decode_attention=decode_attention,
                       matvec=matvec, native=native)


class LeanForward:
    """The Forward interface (see engine/lm/forward.py) implemented directly on the HF weights."""

    name = "fast"

    def __init__(self, model: Any, *, fuse: Any = "auto", head_mode: str = "exact",
                 decode_attention: str = "sdpa", matvec: str = "split", native: bool = True) -> None:
        if decode_attention not in DECODE_ATTENTION:
            raise ValueError(f"decode_attention must be one of {DECODE_ATTENTION}")
        self.decode_attention = decode_attention
        self.linear = SplitLinear(matvec)  # raises ValueError on an unknown mode
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
        # the decode step reads the weights directly: a subclass with its own kernel (quantized.py)
        # keeps the general loop
        self._stepping = type(self)._linear is LeanForward._linear
        self._steps: dict[tuple[int, int, int], DecodeStep] = {}
        self._step_prods: dict[int, Optional[list[tuple[Product, Product, Product, Product]]]] = {}
        # the compiled batch-1 step (nativestep.py); False: the torch step only
        self.native = bool(native) and self._stepping
        self._native: dict[int, Optional[NativeStep]] = {}
        self.kv = LeanKV(self.n_layers, self.n_kv, self.head_dim, self.dtype, self.device)
        self._load_weights()
        rot = base.rotary_emb
        self._inv_freq = rot.inv_freq.detach().to(self.device, torch.float32)
        self._rope_scale = float(getattr(rot, "attention_scaling", 1.0))
        self._rot = torch.empty(0)
        self._build_rope(max(int(getattr(cfg, "max_position_embeddings", 2048) or 2048), 16))
        self.head_mode = "exact"
        self._head_q: Any = None
        self.set_head_mode(head_mode)

    # ---- weights -----------------------------------------------------------------------------
    def _load_weights(self) -> None:
        """Reference the HF weights (see :func:`fastweights.load_weights`); re-run whenever the
        parameters' signature changes."""
        w = load_weights(self.model, self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.fused)
        self.embed, self.norm, self.w_head, self.b_head = w.embed, w.norm, w.w_head, w.b_head
        self.layers: list[LeanLayer] = w.layers
        self.extra_weight_bytes = w.extra_weight_bytes  # bytes of weights held beyond HF's own
        self.linear.clear()
        self._step_prods = {}
        self._steps = {}
        self._native = {}
        if getattr(self, "head_mode", "exact") == "int8":
            self._head_q = Int8Head(self.w_head, self.b_head)
        self._sig = weight_signature(self.model)

    @property
    def matvec(self) -> str:
        return self.linear.mode

    def _linear(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Every product of the forward and the exact head goes through here: the split mat-vec
        kernel (:class:`fastweights.SplitLinear`); a subclass swaps the kernel (quantized.py)."""
        return self.linear(x, w, b)

    # ---- rotary tables -----------------------------------------------------------------------
    def _build_rope(self, n: int) -> None:
        """The rotation table (``fastdecode.rope_table``) for positions [0, n), cos and sin
        computed as HF does (fp32), then cast to the model's dtype as HF casts them."""
        pos = torch.arange(n, device=self.device, dtype=torch.int64)
        freqs = pos[:, None].float() * self._inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self._rope_scale).to(self.dtype)
        sin = (emb.sin() * self._rope_scale).to(self.dtype)
        self._rot = rope_table(cos, sin)

    def _rot_rows(self, past: int, t: int, position_ids: Optional[torch.Tensor]) -> torch.Tensor:
        """The table's rows for these positions, (B|1, T, 2, 2, head_dim/2)."""
        top = past + t if position_ids is None else int(position_ids.max()) + 1
        if top > self._rot.shape[0]:
            self._build_rope(max(top, 2 * self._rot.shape[0]))
        if position_ids is None:
            return self._rot[past:past + t][None]
        return self._rot[position_ids.to(self.device)]

    def _rope(self, x: torch.Tensor, rot: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """RoPE of x (B, T, heads, head_dim) at the positions of ``rot`` (from :meth:`_rot_rows`);
        into ``out`` (may be ``x`` itself) when given."""
        b, t, n, d = x.shape
        y = x.reshape(b, t, n, 1, 2, d // 2) * rot[:, :, None]
        if out is None:
            return y.sum(-2).view(b, t, n, d)
        torch.sum(y, -2, out=out.view(b, t, n, 2, d // 2))
        return out

    # ---- LM head -----------------------------------------------------------------------------
    def set_head_mode(self, mode: str) -> None:
        """``exact`` (fp32 matmul), ``chunked`` (same maths, vocabulary in blocks) or ``int8``
        (per-channel int8 weights, dynamic activation quantization: approximate, opt-in only)."""
        if mode not in HEAD_MODES:
            raise InputError(f"unknown LM-head mode {mode!r}: use one of {', '.join(HEAD_MODES)}")
        if mode == "int8" and self._head_q is None:
            self._head_q = Int8Head(self.w_head, self.b_head)
        self.head_mode = mode

    @torch.inference_mode()
    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.head_mode == "int8":
            return self._head_q(hidden.float())
        if self.head_mode == "chunked":
            return chunked_linear(hidden, self.w_head, self.b_head).float()
        return self._linear(hidden, self.w_head, self.b_head).float()

    # ---- caches (see fastcache.py) ----------------------------------------------------------
    def new_cache(self, batch: int = 1) -> LeanCache:
        return self.kv.new_cache(batch)

    def cache_len(self, cache: LeanCache) -> int:
        return cache.length

    def fork(self, cache: LeanCache, keep: Optional[int] = None) -> LeanCache:
        return self.kv.fork(cache, keep)

    def repeat(self, cache: LeanCache, n: int) -> LeanCache:
        return self.kv.repeat(cache, n)

    def select(self, cache: LeanCache, rows: torch.Tensor) -> LeanCache:
        return self.kv.select(cache, rows)

    def stack(self, parts: list[tuple[LeanCache, int]]) -> LeanCache:
        return self.kv.stack(parts)

    def cache_bytes(self, cache: LeanCache) -> int:
        return self.kv.cache_bytes(cache)

    def cache_allocated_bytes(self, cache: LeanCache) -> int:
        return self.kv.cache_allocated_bytes(cache)

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
        return self._run(ids, cache, position_ids, attention_mask, False)[0]

    def _run(self, ids: torch.Tensor, cache: LeanCache, position_ids: Optional[torch.Tensor],
             attention_mask: Optional[torch.Tensor], head: bool) -> tuple[torch.Tensor, bool]:
        """The final hidden states, or — with ``head``, when the compiled step runs — the exact
        head's logits from the same call; the flag says which."""
        ids = ids.to(self.device)
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise InputError(f"ids must be a non-empty (batch, tokens) tensor, got {tuple(ids.shape)}")
        b, t = ids.shape
        past = cache.length
        self._calls += 1
        # ~0.3-0.8 ms for 270 parameters: checked when a sequence starts, on every multi-token
        # call (prefill, a new chat turn, scoring) and every 32nd decode step — not every step
        if (t > 1 or past == 0 or self._calls % 32 == 0) and weight_signature(self.model) != self._sig:
            self._load_weights()
        rot = self._rot_rows(past, t, position_ids)
        mask = self._mask(b, past, t, attention_mask)
        st: KVStore = self.kv.reserve(cache, b, t)
        nat = self._native_step() if t == 1 and b == 1 and mask is None else None
        step = self._decode_step(b) if t == 1 and nat is None else None
        if nat is not None:
            out = nat.run(ids, st, past, rot, head)
        elif step is not None:
            out = step.run(self, self._step_prods[step.parts], ids, st, past, rot, mask)
        else:
            out = self._layers(ids, st, past, rot, mask)
        cache.length = past + t
        return out, nat is not None and head

    def _native_step(self) -> Optional[NativeStep]:
        """The compiled batch-1 step (one per forward: its scratch is per calling thread, as
        the torch step's buffers are), or None where the torch step runs."""
        if not self.native:
            return None
        key = threading.get_ident()
        if key not in self._native:
            if len(self._native) >= 8:
                self._native.clear()
            self._native[key] = make_native_step(self)
        return self._native[key]

    def _decode_step(self, rows: int) -> Optional[DecodeStep]:
        """The decode step for this many rows at the current thread count, or None where the
        general loop runs (too many rows, unfused weights, a subclass's own kernel). Its
        buffers are per calling thread, so concurrent callers never share them."""
        if not self._stepping or rows > SPLIT_MAX_ROWS or self.dtype != torch.float32:
            return None  # (HF norms reduced-precision activations in fp32: the general loop)
        parts = self.linear.parts if self.linear.mode == "split" else 1
        key = (rows, parts, threading.get_ident())
        step = self._steps.get(key)
        if step is not None:
            return step
        if parts not in self._step_prods:
            self._step_prods[parts] = step_products(self.layers, parts)
        if self._step_prods[parts] is None:
            return None
        if len(self._steps) >= 8:  # a few shapes stay; buffers are small but not free
            self._steps.clear()
        step = self._steps[key] = DecodeStep(self, rows, parts)
        return step

    def _layers(self, ids: torch.Tensor, st: KVStore, past: int, rot: torch.Tensor,
                mask: Optional[torch.Tensor]) -> torch.Tensor:
        """The general layer loop: any number of positions (prefill, scoring), or a decode step
        the step shape does not cover."""
        b, t = ids.shape
        causal = mask is None and t > 1
        s = past + t
        nh, nkv, d = self.n_heads, self.n_kv, self.head_dim
        qd, kd = nh * d, nkv * d
        x = F.embedding(ids, self.embed)
        lin = self._linear
        for li, L in enumerate(self.layers):
            h = F.rms_norm(x, (self.hidden_size,), L.ln1, self.eps)
            if L.wqkv is not None:
                qkv = lin(h, L.wqkv, L.bqkv)
                # q and k are adjacent in the fused output: one RoPE over both, in place, so K
                # and V stay adjacent and one copy writes both into the cache
                qk = self._rope(qkv[..., :qd + kd].view(b, t, nh + nkv, d), rot,
                                out=qkv[..., :qd + kd].view(b, t, nh + nkv, d))
                q = qk[:, :, :nh]
                st.kv[li, :, :, :, past:s].copy_(qkv[..., qd:].view(b, t, 2, nkv, d).permute(2, 0, 3, 1, 4))
            else:
                q, k, v = lin(h, L.wq, L.bq), lin(h, L.wk, L.bk), lin(h, L.wv, L.bv)
                q = self._rope(q.view(b, t, nh, d), rot)
                k = self._rope(k.view(b, t, nkv, d), rot)
                st.k[li, :, :, past:s].copy_(k.transpose(1, 2))
                st.v[li, :, :, past:s].copy_(v.view(b, t, nkv, d).transpose(1, 2))
            a = self._attention(q, st.k[li, :, :, :s], st.v[li, :, :, :s], mask, b, t, causal)
            x = x + lin(a, L.wo, L.bo)
            h = F.rms_norm(x, (self.hidden_size,), L.ln2, self.eps)
            if L.wgu is not None:
                g, u = lin(h, L.wgu, L.bgu).chunk(2, dim=-1)
            else:
                g, u = lin(h, L.wg, L.bg), lin(h, L.wu, L.bu)
            x = x + lin(F.silu(g) * u, L.wd, L.bd)
        return F.rms_norm(x, (self.hidden_size,), self.norm, self.eps)

    @torch.inference_mode()
    def logits(self, ids: torch.Tensor, cache: LeanCache, *, position_ids: Optional[torch.Tensor] = None,
               attention_mask: Optional[torch.Tensor] = None, keep: int = 1) -> torch.Tensor:
        # the exact head can run inside the compiled batch-1 step (one parallel region, no
        # second call); every other case goes through head()
        fused_head = keep != 0 and self.head_mode == "exact" and type(self).head is LeanForward.head
        h, done = self._run(ids, cache, position_ids, attention_mask, fused_head)
        if done:
            return h
        if keep:
            h = h[:, -keep:]
        return self.head(h)

    def describe(self) -> str:
        return (f"lean forward · {self.n_layers} layers · {('fused (adopted, no copy)' if self.fused == 'adopt' else 'fused (copies)') if self.fused else 'separate'} "
                f"projections · matvec {self.matvec} ({self.linear.parts} blocks) · batch-1 step "
                f"{'compiled' if self._native_step() is not None else 'torch'} · head {self.head_mode} · "
                f"extra weights {self.extra_weight_bytes / 2**20:.1f} MiB")

