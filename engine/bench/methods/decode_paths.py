"""Dashboard rows for the decode engine paths: the exact lean forward and the reduced-precision
int8 decode path (engine/lm/quantized.py), so their cost sits beside the cache and prompt methods
and the int8 row's quality (fidelity KL, first divergence) beside its speed.

Both keep the baseline's prompt and cache semantics and change only the forward. The int8 row is
INEXACT (its label says so): its decode products read int8 weights, its prefill stays fp32, and it
is scored step by step as it decodes (``tf_chunked`` off), so the fidelity KL measures the int8
products. The bits-per-byte pass is skipped (``model_changing`` off): it feeds 512-token windows,
which run on the fp32 products and would show no change.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.errors import InputError

from .base import Method

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


class _PathMethod(Method):
    """A baseline whose forward is built by ``_make`` once per model (then shared by its runs)."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._fwd: Any = None
        self._fwd_model: Any = None

    def _make(self, model: Any) -> Any:
        raise NotImplementedError

    def forward(self, lm: LoadedModel) -> Any:
        if self._fwd is None or self._fwd_model is not lm.model:
            fwd = self._make(lm.model)
            if fwd is None:
                raise InputError(f"method {self.name!r}: this model or torch build does not support it",
                                 "the lean path needs a Llama/Mistral/Qwen2 model on CPU")
            self._fwd, self._fwd_model = fwd, lm.model
        return self._fwd


class LeanExact(_PathMethod):
    name = "lean-fp32"
    label = "Lean forward, fp32 (exact)"
    forward_path = "fast"
    tf_chunked = True  # exact cache: one chunked forward equals step-by-step feeding (1e-4)

    def _make(self, model: Any) -> Any:
        from engine.lm.fastpath import make_lean_forward

        return make_lean_forward(model)


class Int8Decode(_PathMethod):
    name = "int8-decode"
    label = "Lean forward, int8 weight-only decode (INEXACT; prefill fp32)"
    forward_path = "int8"
    speed_note = "inexact: int8 weights per output channel, bf16 activations in decode steps"

    def _make(self, model: Any) -> Any:
        from engine.lm.quantized import make_int8_forward

        return make_int8_forward(model)
