"""The lean forward's weights and the products over them: how the HF parameters are referenced
(never copied on CPU: Q/K/V and gate/up are fused by *adoption*), and the kernels that read them —
few-row products split across the intra-op threads, and the chunked and int8 LM heads.

Kept apart from ``fastpath.py`` (the forward and its caches) so a new weight format or kernel
changes one file; every product here equals ``F.linear`` to fp32 rounding except the opt-in int8
head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

MATVEC = ("split", "linear")  # few-row products: output rows split across threads, or F.linear
SPLIT_MAX_ROWS = 32  # above this many rows a product is compute-bound and F.linear is threaded


@dataclass
class LeanLayer:
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
    bgu: Optional[torch.Tensor]
    bg: Optional[torch.Tensor]
    bu: Optional[torch.Tensor]
    wd: torch.Tensor
    bd: Optional[torch.Tensor]


@dataclass
class LeanWeights:
    """Every tensor the lean forward reads, and the bytes it holds beyond HF's own."""

    embed: torch.Tensor
    norm: torch.Tensor
    w_head: torch.Tensor
    b_head: Optional[torch.Tensor]
    layers: list[LeanLayer]
    extra_weight_bytes: int


def weight_signature(model: Any) -> tuple:
    """Identity, storage and in-place version of every parameter: changes whenever a method
    edits or swaps weights, so the lean path never computes with stale ones."""
    return tuple((id(p), p.data_ptr(), p._version) for p in model.parameters())


def _bias(lin: Any) -> Optional[torch.Tensor]:
    b = getattr(lin, "bias", None)
    return b.detach() if b is not None else None


def _cat_bias(*bs: Optional[torch.Tensor], sizes: tuple[int, ...]) -> Optional[torch.Tensor]:
    if all(b is None for b in bs):
        return None
    ref = next(b for b in bs if b is not None)
    return torch.cat([b if b is not None else ref.new_zeros(n) for b, n in zip(bs, sizes)])


def load_weights(model: Any, q_dim: int, kv_dim: int, fuse: Any) -> LeanWeights:
    """Reference the HF weights (no copy); with ``fuse``, concatenate QKV and gate/up
    (``"adopt"``: the HF parameters become views of the fused buffers, see :func:`fused_weight`)."""
    base = model.model
    b_head = _bias(model.lm_head)
    extra_bytes = 0
    layers: list[LeanLayer] = []
    for lay in base.layers:
        a, m = lay.self_attn, lay.mlp
        bq, bk, bv = _bias(a.q_proj), _bias(a.k_proj), _bias(a.v_proj)
        bg, bu = _bias(m.gate_proj), _bias(m.up_proj)
        wqkv = bqkv = wgu = bgu = None
        if fuse:  # before the weights are read below: adoption rebinds them
            adopt = fuse == "adopt"
            wqkv = fused_weight([a.q_proj, a.k_proj, a.v_proj], adopt)
            bqkv = _cat_bias(bq, bk, bv, sizes=(q_dim, kv_dim, kv_dim))
            wgu = fused_weight([m.gate_proj, m.up_proj], adopt)
            inter = m.gate_proj.weight.shape[0]
            bgu = _cat_bias(bg, bu, sizes=(inter, inter))
            extra = [bqkv, bgu] if adopt else [wqkv, bqkv, wgu, bgu]
            for t in extra:
                if t is not None:
                    extra_bytes += t.numel() * t.element_size()
        wq, wk, wv = a.q_proj.weight.detach(), a.k_proj.weight.detach(), a.v_proj.weight.detach()
        wg, wu = m.gate_proj.weight.detach(), m.up_proj.weight.detach()
        layers.append(LeanLayer(
            ln1=lay.input_layernorm.weight.detach(), ln2=lay.post_attention_layernorm.weight.detach(),
            wq=wq, wk=wk, wv=wv, bq=bq, bk=bk, bv=bv, wqkv=wqkv, bqkv=bqkv,
            wo=a.o_proj.weight.detach(), bo=_bias(a.o_proj), wg=wg, wu=wu, wgu=wgu, bgu=bgu, bg=bg, bu=bu,
            wd=m.down_proj.weight.detach(), bd=_bias(m.down_proj)))
    return LeanWeights(embed=base.embed_tokens.weight.detach(), norm=base.norm.weight.detach(),
                       w_head=model.lm_head.weight.detach(), b_head=b_head, layers=layers,
                       extra_weight_bytes=extra_bytes)


def fused_weight(mods: list[Any], adopt: bool) -> torch.Tensor:
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


class SplitLinear:
    """``F.linear(x, w, b)``, with few-row products split across the intra-op threads.

    Why: a decode step is a chain of matrix-vector products, and on CPU ``F.linear`` runs a
    one-row product on one thread, streaming the weights at one core's bandwidth (measured
    here: 16 GB/s of a 47 GB/s machine). Viewing ``w`` (N, K) as P blocks of N/P output rows
    — a zero-copy view — and multiplying them with one ``bmm`` lets torch give each thread a
    block. Each output element is the same K-long dot product either way (tests check the
    logits against the standard path). ``mode="linear"`` always uses ``F.linear``."""

    def __init__(self, mode: str = "split") -> None:
        if mode not in MATVEC:
            raise ValueError(f"matvec must be one of {MATVEC}")
        self.mode = mode
        self._views: dict[tuple[int, int], tuple[torch.Tensor, Optional[torch.Tensor]]] = {}

    def clear(self) -> None:
        """Forget the per-weight views (after the weights were reloaded)."""
        self._views = {}

    @property
    def parts(self) -> int:
        """Blocks per product: one per intra-op thread (at most 8)."""
        return min(torch.get_num_threads(), 8)

    def __call__(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
        p = self.parts
        k = x.shape[-1]
        rows = x.numel() // k if k else 0
        if p < 2 or self.mode != "split" or not 0 < rows <= SPLIT_MAX_ROWS or x.device.type != "cpu":
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


def chunked_linear(x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor], rows: int = 8192) -> torch.Tensor:
    """x @ w.T with the output (vocabulary) axis in blocks that stay in cache."""
    out = x.new_empty(*x.shape[:-1], w.shape[0])
    for i in range(0, w.shape[0], rows):
        out[..., i:i + rows] = F.linear(x, w[i:i + rows], None if b is None else b[i:i + rows])
    return out


class Int8Head:
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
