"""A reduced-precision decode path (``--engine-path int8``): the lean forward with its few-row
products (decode steps, batched rollouts) run on weight-only int8 copies of the weights.

INEXACT by design, so it is only ever an explicit choice for chat and sampling and never serves
scoring: :func:`engine.lm.forward.get_forward` gives callers that ask for ``exact=True`` (AdvTok
scoring, log-likelihood rewards) the exact lean forward instead.

Why int8 weight-only, per output channel, with bf16 activations (``torch._weight_int8pack_mm``):
a decode step is memory-bound (it streams every weight once), so a quarter of the bytes is the
lever. ``bench/quant_kernels.py`` measured the kernels torch ships for CPU at the bundled model's
shapes before this was chosen: the int8 kernel is several times faster than an fp32 mat-vec with
bf16 activations and much slower with fp32 ones (no vectorised fp32 path); the int4 kernel
(``_weight_int4pack_mm_for_cpu``, bf16 activations) was about as fast as int8 but erred ~10× more
there (that script's int4 packing is unverified), and far slower with fp32 activations. Error per
product is ≈ 1 % of its largest output (weight rounding: step = max|w_row|/127); the effect on the
next-token distribution is measured, not assumed (``bench/int8_quality.py``: KL to the fp32 path
and top-1 agreement over the dashboard suite).

Products with more than ``SPLIT_MAX_ROWS`` rows (prefill, scoring chunks) stay fp32: they are
compute-bound, MKL's fp32 GEMM is faster there, and the prompt's KV cache stays exact. The int8
copies cost a quarter of the fp32 weights' bytes on top of them (the model keeps its fp32
weights: the exact paths share them); they are rebuilt whenever the lean forward reloads weights
(a method that edits weights is seen).
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from engine.errors import first_line
from engine.lm.fastpath import LeanForward, unsupported_reason
from engine.lm.fastweights import SPLIT_MAX_ROWS

LABEL = "int8 weight-only decode (inexact)"


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``w ≈ q * scale[:, None]``, |q| ≤ 127.

    The scale is a row's largest magnitude / 127, so the rounding error of any weight is at most
    half a step (scale / 2); an all-zero row gets scale 1 (q = 0, exact)."""
    w = w.detach().float()
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale


def int8_supported() -> Optional[str]:
    """Why this torch build cannot run the int8 kernel on CPU, or None when it can."""
    if not hasattr(torch, "_weight_int8pack_mm"):
        return "this torch has no _weight_int8pack_mm"
    try:
        q, s = quantize_rows(torch.ones(4, 8))
        torch._weight_int8pack_mm(torch.ones(1, 8, dtype=torch.bfloat16), q, s.bfloat16())
    except RuntimeError as e:
        return f"_weight_int8pack_mm failed: {first_line(str(e), type(e).__name__)}"
    return None


class Int8LeanForward(LeanForward):
    """The lean forward whose decode products read int8 weights. Same interface and caches."""

    name = "int8"
    exact = False
    label = LABEL

    def __init__(self, model: Any, **kw: Any) -> None:
        self._q: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        super().__init__(model, **kw)

    def _load_weights(self) -> None:
        super()._load_weights()
        self._q = {}  # weights changed (or first load): quantize again, lazily

    def _qweight(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hit = self._q.get(id(w))
        if hit is not None and hit[0] is w:
            return hit[1], hit[2]
        with torch.inference_mode(False):
            q, s = quantize_rows(w)
        s16 = s.to(torch.bfloat16)
        self._q[id(w)] = (w, q, s16)
        return q, s16

    def quantized_bytes(self) -> int:
        """Bytes of the int8 copies (weights + bf16 scales) made so far."""
        return sum(q.numel() + s.numel() * s.element_size() for _, q, s in self._q.values())

    def _linear(self, x: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor] = None) -> torch.Tensor:
        k = x.shape[-1]
        rows = x.numel() // k if k else 0
        if not 0 < rows <= SPLIT_MAX_ROWS or x.device.type != "cpu" or w.dim() != 2:
            return super()._linear(x, w, b)
        q, s = self._qweight(w)
        y = torch._weight_int8pack_mm(x.reshape(rows, k).to(torch.bfloat16), q, s)
        y = y.to(x.dtype).view(*x.shape[:-1], w.shape[0])
        return y if b is None else y + b

    def describe(self) -> str:
        return f"{LABEL} · {super().describe()}"


def make_int8_forward(model: Any, **kw: Any) -> Optional[Int8LeanForward]:
    """The int8 decode forward for ``model``, or None when the lean path or the kernel is missing."""
    if unsupported_reason(model) is not None or int8_supported() is not None:
        return None
    return Int8LeanForward(model, **kw)
