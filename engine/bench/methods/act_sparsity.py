"""Activation sparsity in the MLPs: magnitude Top-K vs PCA-rotated Top-K (LaRoSA-style).

A quality study, not a speed-up: every MLP input (the post-attention-norm hidden state that feeds
gate/up projections) keeps only its K largest-magnitude coordinates per token (K = (1 − s)·H),
either in the model's own basis (magnitude Top-K, TEAL-like) or in a per-layer PCA basis Q
(rotated Top-K, LaRoSA-style): z = x·Q, keep the top-K |z|, x' = z_K·Qᵀ. A deployment folds Q
into the weights (W·Q), so the product really is a sparse vector times a dense matrix; here the
rotation is applied and undone around the dense matmul, which gives the same numbers. Without a
sparse kernel nothing gets faster (the extra top-k and rotations make it slower), so the speed
columns read "n/a: no sparse kernel".

Q comes from the eigenvectors of the uncentred second moment XᵀX of the MLP inputs collected on a
shipped calibration text (``engine/bench/suites/calibration-v1.txt``), which is distinct from the
suite's held-out prose used for the perplexity / bits-per-byte evaluation. Calibration runs once
per loaded model (charged as prepare time); hooks are removed again by ``restore``.
"""
from __future__ import annotations

import contextlib
import hashlib
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch

from engine.errors import InputError
from engine.progress import CancelToken, ProgressFn, check, report
from engine.lm.templates import encode_user_text
from .base import Method, MethodOutput, Query
from .params import reject_unknown

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

CALIBRATION_FILE = Path(__file__).resolve().parents[1] / "suites" / "calibration-v1.txt"


def mlp_modules(model: Any) -> list[Any]:
    """The decoder layers' MLP modules, in order."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    layers = getattr(base, "layers", None)
    if layers is None or not all(hasattr(l, "mlp") for l in layers):
        raise InputError("activation sparsity needs decoder layers with an .mlp module")
    return [l.mlp for l in layers]


def topk_mask(x: torch.Tensor, keep: int) -> torch.Tensor:
    """``x`` with all but the ``keep`` largest-|x| entries of the last dim set to zero."""
    if keep >= x.shape[-1]:
        return x
    if keep <= 0:
        return torch.zeros_like(x)
    idx = x.abs().topk(keep, dim=-1).indices
    return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))


def pca_rotation(second_moment: torch.Tensor) -> torch.Tensor:
    """Orthogonal Q (H, H) whose columns are the eigenvectors of XᵀX, largest eigenvalue first."""
    evals, evecs = torch.linalg.eigh(second_moment.double())
    order = torch.argsort(evals, descending=True)
    return evecs[:, order].to(torch.float32).contiguous()


def calibration_text() -> str:
    return CALIBRATION_FILE.read_text(encoding="utf-8")


def collect_second_moments(lm: LoadedModel, fwd: Any, text: str, *, window: int = 512,
                           progress: Optional[ProgressFn] = None,
                           cancel: Optional[CancelToken] = None) -> tuple[list[torch.Tensor], int]:
    """Per-layer XᵀX (fp64) of the MLP inputs over ``text`` (fresh windows); and token count."""
    mods = mlp_modules(lm.model)
    h = lm.model.config.hidden_size
    acc = [torch.zeros(h, h, dtype=torch.float64) for _ in mods]

    def make(i: int):
        def pre(module: Any, args: tuple, kwargs: dict) -> None:
            x = (args[0] if args else kwargs["x"] if "x" in kwargs else kwargs["hidden_states"])
            x = x.reshape(-1, x.shape[-1]).double().cpu()
            acc[i] += x.T @ x
        return pre

    ids = encode_user_text(lm.tokenizer, text)
    if len(ids) < 2:
        raise InputError("calibration text is too short")
    handles = [m.register_forward_pre_hook(make(i), with_kwargs=True) for i, m in enumerate(mods)]
    try:
        for s in range(0, len(ids), window):
            check(cancel)
            report(progress, "bench", s, len(ids), "calibrating MLP rotations")
            with torch.inference_mode():
                fwd.logits(torch.tensor([ids[s:s + window]], device=lm.torch_device),
                           fwd.new_cache(), keep=1)
    finally:
        for hd in handles:
            hd.remove()
    return acc, len(ids)


class _Sparsity(Method):
    """Shared: Top-K on every MLP input through forward pre-hooks; measured sparsity kept."""

    model_changing = True
    speed_note = "n/a: no sparse kernel"
    rotated = False

    def __init__(self, sparsity: float = 0.4, **params: Any) -> None:
        reject_unknown(self.name, params, ["sparsity"] + (["calibration"] if self.rotated else []))
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) \
                or not 0.0 <= sparsity < 1.0:
            raise InputError(f"sparsity must be a number in [0, 1) (got {sparsity!r})")
        super().__init__(sparsity=float(sparsity))
        self.sparsity = float(sparsity)
        self._handles: list[Any] = []
        self._model: Any = None
        self._zeros = 0
        self._total = 0

    # ---- model change -----------------------------------------------------------------------
    def transform(self, i: int, x: torch.Tensor) -> torch.Tensor:
        z = topk_mask(x, self.keep(x.shape[-1]))
        self._count(z)
        return z

    def keep(self, h: int) -> int:
        return h - int(round(self.sparsity * h))

    def calibrate(self, lm: LoadedModel, *, progress: Optional[ProgressFn] = None,
                  cancel: Optional[CancelToken] = None) -> float:
        return 0.0

    def prepare(self, lm: LoadedModel, *, progress: Optional[ProgressFn] = None,
                cancel: Optional[CancelToken] = None) -> float:
        if self._handles and self._model is lm.model:
            return 0.0
        self.restore(lm)
        aux = self.calibrate(lm, progress=progress, cancel=cancel)

        def make(i: int):
            def pre(module: Any, args: tuple, kwargs: dict):
                if args:
                    return (self.transform(i, args[0]), *args[1:]), kwargs
                key = "x" if "x" in kwargs else "hidden_states"
                return args, {**kwargs, key: self.transform(i, kwargs[key])}
            return pre

        self._handles = [m.register_forward_pre_hook(make(i), with_kwargs=True)
                         for i, m in enumerate(mlp_modules(lm.model))]
        self._model = lm.model
        return aux

    def _count(self, z: torch.Tensor) -> None:
        """Zeros of the sparse vector actually fed (in its own basis), for the measured figure."""
        self._zeros += int((z == 0).sum())
        self._total += z.numel()

    def restore(self, lm: LoadedModel) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @contextlib.contextmanager
    def active(self, lm: LoadedModel) -> Iterator[None]:
        """The model change for one call when the caller has not prepared the method."""
        if self._handles and self._model is lm.model:
            yield
            return
        self.prepare(lm)
        try:
            yield
        finally:
            self.restore(lm)

    def measured_sparsity(self) -> Optional[float]:
        return self._zeros / self._total if self._total else None

    # ---- measured calls ---------------------------------------------------------------------
    def run(self, lm: LoadedModel, q: Query, max_new_tokens: int, *,
            cancel: Optional[CancelToken] = None, sampling: Any = None,
            fixed_length: bool = False) -> MethodOutput:
        with self.active(lm):
            self._zeros = self._total = 0
            out = super().run(lm, q, max_new_tokens, cancel=cancel, sampling=sampling,
                              fixed_length=fixed_length)
        out.extra.update(sparsity_target=self.sparsity, sparsity_measured=self.measured_sparsity(),
                         rotated=self.rotated)
        return out

    def teacher_forced_logprobs(self, lm: LoadedModel, q: Query, target_ids: list[int], *,
                                cancel: Optional[CancelToken] = None) -> torch.Tensor:
        with self.active(lm):
            return super().teacher_forced_logprobs(lm, q, target_ids, cancel=cancel)

    def nll_bits_per_byte(self, lm: LoadedModel, text: str, *,
                          cancel: Optional[CancelToken] = None) -> Optional[dict]:
        with self.active(lm):
            self._zeros = self._total = 0
            res = super().nll_bits_per_byte(lm, text, cancel=cancel)
        if res is not None:
            res.update(sparsity_target=self.sparsity, sparsity_measured=self.measured_sparsity())
        return res


class MagnitudeSparsity(_Sparsity):
    name = "sparsity-magnitude"
    label = "Activation sparsity: magnitude Top-K on MLP inputs (quality only)"
    simplification = ("TEAL-like Top-K on the MLP inputs only; no sparse kernel, so a quality "
                      "study")


# model → {calibration sha: (rotations, tokens)}; weak so a freed model drops its rotations
_CALIB: "weakref.WeakKeyDictionary[Any, dict[str, tuple[list[torch.Tensor], int]]]" = \
    weakref.WeakKeyDictionary()


class RotatedSparsity(_Sparsity):
    name = "sparsity-rotated"
    label = "Activation sparsity: PCA-rotated Top-K on MLP inputs (LaRoSA-style, quality only)"
    simplification = ("LaRoSA rotates and sparsifies every projection input (q/k/v, o_proj, "
                      "gate/up, down_proj); here only the MLP inputs (gate/up), so about half "
                      "the model-level sparsity; calibrated on the shipped calibration text, not "
                      "~20,000 tokens; no sparse kernel")
    rotated = True

    def __init__(self, sparsity: float = 0.4, calibration: Optional[str] = None, **params: Any):
        super().__init__(sparsity=sparsity, **params)
        if calibration is not None:
            if not isinstance(calibration, str) or not calibration.strip():
                raise InputError("calibration text must be a non-empty string")
            self.params["calibration_sha"] = hashlib.sha256(calibration.encode()).hexdigest()[:12]
        self._text = calibration
        self.rotations: list[torch.Tensor] = []
        self.calibration_tokens = 0

    def calibrate(self, lm: LoadedModel, *, progress: Optional[ProgressFn] = None,
                  cancel: Optional[CancelToken] = None) -> float:
        text = self._text if self._text is not None else calibration_text()
        key = hashlib.sha256(text.encode()).hexdigest()
        per_model = _CALIB.setdefault(lm.model, {})
        if key in per_model:
            self.rotations, self.calibration_tokens = per_model[key]
            return 0.0
        t0 = time.perf_counter()
        moments, n = collect_second_moments(lm, self.forward(lm), text, progress=progress,
                                            cancel=cancel)
        self.rotations = [pca_rotation(m) for m in moments]
        self.calibration_tokens = n
        per_model[key] = (self.rotations, n)
        return time.perf_counter() - t0

    def transform(self, i: int, x: torch.Tensor) -> torch.Tensor:
        q = self.rotations[i].to(device=x.device, dtype=x.dtype)
        z = topk_mask(x @ q, self.keep(x.shape[-1]))
        self._count(z)
        return z @ q.T
