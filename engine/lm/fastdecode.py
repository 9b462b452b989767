"""The lean forward's decode step: one new token for each of a few rows (``fastweights.SPLIT_MAX_ROWS``),
the same maths as the general layer loop in ``fastpath.py``, dispatched with as few torch ops as
possible.

Why a separate step: a batch-1 step of SmolLM2-135M streams its 538 MB of weights through ~120
products, and every other op costs a few microseconds of Python and dispatcher time whatever its
size. The general loop ran ~1,000 top-level ops per step (~5,000 counting those they call:
``F.rms_norm`` alone expands to a dozen, dtype copies included), about a third of the step. Here
a layer is 23 ops and allocates nothing:

- every buffer of a step is allocated once per (rows, threads) shape and shared by all layers
  and steps; each op writes into its buffer with ``out=``, and every view an op reads (the split
  product's expanded input, the Q/K/V sections, the attention heads) is made once with the
  buffer;
- the residual adds are folded into the output products (``baddbmm`` in place);
- RoPE is one multiply and one sum over the per-position rotation table (``rope_table``);
- a layer's K and V are adjacent in the fused QKV output and in the cache buffer
  (``fastcache.py``): one copy writes both; the cache's per-layer views for the step come from
  three ``unbind`` calls;
- the RMSNorm's ``/ width + eps`` is one ``addcdiv`` (the same two roundings);
- with ``decode_attention="matmul"`` at batch 1 the attention is two ``bmm`` and a softmax over
  (kv_heads, group, ·) views, written into score buffers shared by every layer (SDPA, the
  default, measured ~1.5 µs a layer faster at two threads: its one call beats four).

Exactness: each value is computed by the same operations in the same order as the Hugging Face
Llama code (RMSNorm as ``w * (x * rsqrt(mean(x²) + eps))``, RoPE as ``x*cos + rotate_half(x)*sin``,
``silu(g) * u``), and the products are the split mat-vec of ``fastweights.SplitLinear``: the
logits equal the general loop's bit for bit (tests/lm/test_fastdecode.py), which the other tests
compare with the standard path (atol 1e-4) and HF ``generate`` (identical greedy tokens). fp32
only: HF norms reduced-precision activations in fp32, which the general loop reproduces.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F


def rope_table(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as a (positions, 2, 2, head_dim/2) table of 2×2 rotations.

    With x = [x1, x2] (the two halves of a head), HF computes ``x*cos + rotate_half(x)*sin`` =
    ``[x1*cos - x2*sin, x2*cos + x1*sin]`` (cos and sin repeat over the halves). Entry [a, b] of
    the table multiplies half b into output half a, so ``(x.view(…, 1, 2, d/2) * T).sum(-2)``
    forms the same two products and adds them once: the same value as HF's, in two ops instead
    of four (negating sin is exact, and a sum of two terms is one rounded addition)."""
    h = cos.shape[-1] // 2
    c, s = cos[:, :h], sin[:, :h]
    return torch.stack((torch.stack((c, -s), 1), torch.stack((s, c), 1)), 1).contiguous()


class Product:
    """One weight as the step multiplies it: split into P blocks of output rows, as a
    (P, K, N/P) view for one ``bmm`` (see ``fastweights.SplitLinear`` for why), or — one thread,
    a size that does not split, or not on CPU — its (K, N) transpose for ``mm``."""

    __slots__ = ("w", "b", "n", "split")

    def __init__(self, w: torch.Tensor, b: Optional[torch.Tensor], parts: int) -> None:
        n, k = w.shape
        self.n = n
        self.b = b
        self.split = parts > 1 and n % parts == 0 and w.is_contiguous() and w.device.type == "cpu"
        self.w = w.view(parts, n // parts, k).transpose(1, 2) if self.split else w.t()


def step_products(layers: list[Any], parts: int) -> Optional[list[tuple[Product, Product, Product, Product]]]:
    """(qkv, o, gate/up, down) products of every layer, or None when a layer is not fused (the
    step needs Q/K/V and gate/up as one product each)."""
    out = []
    for L in layers:
        if L.wqkv is None or L.wgu is None:
            return None
        out.append((Product(L.wqkv, L.bqkv, parts), Product(L.wo, L.bo, parts),
                    Product(L.wgu, L.bgu, parts), Product(L.wd, L.bd, parts)))
    return out


class _Port:
    """A (rows, N) buffer as the products read and write it: ``flat``; ``exp``, the (P, rows, N)
    stride-0 view a split product takes as input; ``o3``, the (P, rows, N/P) block layout a split
    product writes (the buffer itself at one row, else a scratch buffer ``scatter`` copies from)."""

    __slots__ = ("flat", "exp", "o3", "scatter")

    def __init__(self, rows: int, n: int, parts: int, dtype: torch.dtype, device: torch.device) -> None:
        self.flat = torch.empty(rows, n, dtype=dtype, device=device)
        self.exp = self.flat.view(1, rows, n).expand(parts, rows, n)
        self.o3: Optional[torch.Tensor] = None
        self.scatter: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        if parts > 1 and n % parts == 0:
            if rows == 1:
                self.o3 = self.flat.view(parts, 1, n // parts)
            else:
                self.o3 = torch.empty(parts, rows, n // parts, dtype=dtype, device=device)
                self.scatter = (self.flat.view(rows, parts, n // parts), self.o3.transpose(0, 1))


def _into(p: Product, x: _Port, y: _Port) -> None:
    """y = x @ p.wᵀ (+ bias)."""
    if p.split:
        torch.bmm(x.exp, p.w, out=y.o3)
        if y.scatter is not None:
            y.scatter[0].copy_(y.scatter[1])
    else:
        torch.mm(x.flat, p.w, out=y.flat)
    if p.b is not None:
        y.flat.add_(p.b)


def _add_into(p: Product, x: _Port, r: _Port, tmp: _Port) -> None:
    """r += x @ p.wᵀ (+ bias); the product and the add are the same two roundings as
    ``r + linear(x)`` (a biased product is formed whole in ``tmp`` first, as HF adds it)."""
    if p.b is None and p.split and r.scatter is None:
        r.o3.baddbmm_(x.exp, p.w)
    elif p.b is None and not p.split:
        r.flat.addmm_(x.flat, p.w)
    else:
        _into(p, x, tmp)
        r.flat.add_(tmp.flat)


class DecodeStep:
    """The buffers and views of one (rows, parts) step shape; :meth:`run` is one decode step."""

    def __init__(self, fwd: Any, rows: int, parts: int) -> None:
        dt, dev = fwd.dtype, fwd.device
        nh, nkv, d = fwd.n_heads, fwd.n_kv, fwd.head_dim
        hs = fwd.hidden_size
        inter = fwd.layers[0].wd.shape[1]
        self.rows, self.parts = rows, parts
        self.qd, self.kd, self.inter = nh * d, nkv * d, inter
        nqkv = self.qd + 2 * self.kd
        port = lambda n: _Port(rows, n, parts, dt, dev)  # noqa: E731
        self.x, self.h, self.tmp = port(hs), port(hs), port(hs)
        self.qkv, self.a, self.gu, self.m = port(nqkv), port(self.qd), port(2 * inter), port(inter)
        self.sq = torch.empty(rows, hs, dtype=dt, device=dev)
        self.var = torch.empty(rows, 1, dtype=dt, device=dev)
        # the norm's constants as tensors: a Python scalar costs a conversion copy on every op
        self.width = torch.tensor(float(hs), dtype=dt, device=dev)
        self.eps = torch.tensor(fwd.eps, dtype=dt, device=dev)
        qkv = self.qkv.flat
        half = d // 2
        # RoPE over Q and K at once: their heads are adjacent in the QKV output
        self.qk = qkv[:, :self.qd + self.kd].view(rows, nh + nkv, 2, half)
        self.qk5 = self.qk.view(rows, nh + nkv, 1, 2, half)
        self.rot = torch.empty(rows, nh + nkv, 2, 2, half, dtype=dt, device=dev)
        # grouped-query attention at q_len 1: a KV head's query heads are its query axis
        self.q = qkv[:, :self.qd].view(rows, nkv, nh // nkv, d)
        self.a4 = self.a.flat.view(rows, nkv, nh // nkv, d)
        # the new K and V, as (2, rows, kv_heads, 1, d): the layout of a cache slot
        self.kv_new = qkv[:, self.qd:].view(rows, 2, nkv, 1, d).transpose(0, 1)
        self.g, self.u = self.gu.flat[:, :inter], self.gu.flat[:, inter:]
        # batch-1 attention as two bmm over (kv_heads, group, ·) views: q and the output are
        # contiguous there (one row), the cache's K/V heads merge with its batch axis
        self.q3 = qkv[:, :self.qd].view(nkv, nh // nkv, d) if rows == 1 else None
        self.a3 = self.a.flat.view(nkv, nh // nkv, d) if rows == 1 else None
        self.heads = rows * nh
        self._scores = torch.empty(0, dtype=dt, device=dev)
        self._probs = torch.empty(0, dtype=dt, device=dev)

    def _score_buffers(self, s: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and probabilities for ``s`` keys, (kv_heads, group, s) views of buffers that
        grow by doubling (one view per step, shared by every layer)."""
        n = self.heads * s
        if self._scores.numel() < n:
            self._scores = self._scores.new_empty(max(n, 2 * self._scores.numel(), 64 * self.heads))
            self._probs = torch.empty_like(self._scores)
        shape = (self.q3.shape[0], self.q3.shape[1], s)
        return self._scores[:n].view(shape), self._probs[:n].view(shape)

    def _norm(self, w: torch.Tensor) -> None:
        """h = w * (x * rsqrt(mean(x²) + eps)), HF's RMSNorm op for op (``pow(2)`` is ``x*x``,
        ``mean`` is a sum divided by the width)."""
        x, var = self.x.flat, self.var
        torch.mul(x, x, out=self.sq)
        torch.sum(self.sq, -1, keepdim=True, out=var)
        torch.addcdiv(self.eps, var, self.width, out=var)  # var/width + eps: the same two roundings
        var.rsqrt_()
        torch.mul(x, var, out=self.h.flat)
        self.h.flat.mul_(w)

    def run(self, fwd: Any, prods: list[tuple[Product, Product, Product, Product]], ids: torch.Tensor,
            st: Any, past: int, rot: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """One step: ``ids`` (rows, 1) after ``past`` cached positions of store ``st`` (reserved
        for this step); ``rot`` the rotation table's rows (rows|1, 1, 2, 2, d/2);
        ``mask`` None or (rows, 1, 1, past+1). Returns the final hidden states (rows, 1, H), a
        fresh tensor (the buffers are reused by the next step)."""
        s = past + 1
        scale = fwd.scale
        x, h, a, m, tmp, qkv, gu = self.x, self.h, self.a, self.m, self.tmp, self.qkv, self.gu
        torch.index_select(fwd.embed, 0, ids.view(-1), out=x.flat)
        slots = st.kv[:, :, :, :, past:s].unbind(0)
        sdpa = fwd.decode_attention == "sdpa"
        bmm = not sdpa and mask is None and self.q3 is not None
        if bmm:  # (kv_heads, s, d) per layer, K transposed once
            kts = st.k[:, :, :, :s].flatten(1, 2).transpose(-1, -2).unbind(0)
            vs = st.v[:, :, :, :s].flatten(1, 2).unbind(0)
            sc, pr = self._score_buffers(s)
        else:
            ks = st.k[:, :, :, :s].unbind(0)
            vs = st.v[:, :, :, :s].unbind(0)
            if not sdpa:
                kts = [k.transpose(-1, -2) for k in ks]
        for li, (L, (p_qkv, p_o, p_gu, p_d)) in enumerate(zip(fwd.layers, prods)):
            self._norm(L.ln1)
            _into(p_qkv, h, qkv)
            torch.mul(self.qk5, rot, out=self.rot)
            torch.sum(self.rot, -2, out=self.qk)
            slots[li].copy_(self.kv_new)
            if bmm:  # the general loop's matmul/softmax/matmul, each op into its buffer
                torch.bmm(self.q3, kts[li], out=sc)
                sc.mul_(scale)
                torch.softmax(sc, -1, out=pr)
                torch.bmm(pr, vs[li], out=self.a3)
            elif sdpa:
                self.a4.copy_(F.scaled_dot_product_attention(self.q, ks[li], vs[li], attn_mask=mask,
                                                             scale=scale))
            else:  # three small ops instead of SDPA's kernel (an option; bench/decode.py measures it)
                w = torch.matmul(self.q, kts[li])
                w.mul_(scale)
                if mask is not None:
                    w.masked_fill_(~mask, float("-inf"))
                torch.matmul(torch.softmax(w, dim=-1), vs[li], out=self.a4)
            _add_into(p_o, a, x, tmp)
            self._norm(L.ln2)
            _into(p_gu, h, gu)
            F.silu(self.g, inplace=True)
            torch.mul(self.g, self.u, out=m.flat)
            _add_into(p_d, m, x, tmp)
        xf = x.flat
        var = torch.sum(xf * xf, -1, keepdim=True).div_(self.width).add_(self.eps).rsqrt_()
        return torch.mul(xf, var).mul_(fwd.norm).view(self.rows, 1, -1)
