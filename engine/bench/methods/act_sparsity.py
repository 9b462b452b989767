"""Activation sparsity on every projection input: magnitude Top-K vs LaRoSA's rotated Top-K.

A quality study, not a speed-up. Each decoder layer has four inputs that feed linear layers
(docs/bench-methods.md, "Activation sparsity"):

- ``attn``: the normed hidden state that feeds q_proj, k_proj and v_proj (one vector, shared);
- ``o``: the attention output that feeds o_proj;
- ``mlp``: the normed hidden state that feeds gate_proj and up_proj (shared);
- ``down``: the gated product that feeds down_proj.

Every one keeps only its K largest-magnitude coordinates per token (K = H − round(s·H) for an
input of width H), so every projection of every layer runs at the same target sparsity s and the
model-level figure is s too. ``sparsity-magnitude`` (TEAL-like) does this in the model's own
basis. ``sparsity-rotated`` (LaRoSA) first rotates the two block inputs (``attn``, ``mlp``) of
layer l by an orthogonal Q from the PCA of that input on calibration text: z = x·Q, keep the
top-K |z|, x' = z_K·Qᵀ; like LaRoSA's reference code it applies plain Top-K to the o_proj and
down_proj inputs (a rotation there could not be folded into the weights before it). A deployment
folds Q into the weights (W·Q), so q/k/v and gate/up really read K rows; here the rotation is
applied and undone around the dense matmul, which gives the same numbers (at s = 0 the logits
equal the dense model's within fp32 rounding). With no sparse kernel nothing gets faster, so the
speed columns read "n/a: no sparse kernel".

What is reported (``MethodOutput.extra``, the prose result): the measured zero fraction of each
input (in the basis where it is sparse), and the model-level figure: the fraction of the
projections' weight reads a sparse kernel could skip, each input weighted by the weights it feeds
(q/k/v together for ``attn``, gate/up for ``mlp``); and the same fraction over all weights read per
token, the dense lm_head included.

Calibration (``sparsity-rotated``): the uncentred second moment XᵀX of the ``attn`` and ``mlp``
inputs of every layer on the dense model, over the first ``calib_tokens`` (default 20,480, the
reference's 10 × 2,048) tokens of the shipped documentation text (``calibration-docs-v1.txt``,
which shares no query, document or reference with any shipped suite: tests/bench/methods/
test_act_sparsity.py checks it), in fresh windows of 2,048; Q = its eigenvectors. Computed once per (weights, text, settings) and kept in the cache folder
(``sparsity/larosa-KEY.safetensors``, integrity-recorded, written atomically under a lock).
"""
from __future__ import annotations

import hashlib
import json
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from engine.errors import InputError
from engine.progress import CancelToken, ProgressFn, check, report
from engine.lm.templates import encode_user_text
from .base import Method, MethodOutput, Query
from .params import int_param, reject_unknown
from .sparsity_sites import (ROTATED_SITES, SITE_LABELS, SITE_PROJECTIONS, SITES,  # noqa: F401
                             _decoder_layers, _first_input, layer_sites, mlp_modules, site_weights,
                             topk_mask)

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

SUITES = Path(__file__).resolve().parents[1] / "suites"
CALIBRATION_FILE = SUITES / "calibration-v1.txt"
#: the long calibration text (Python's own documentation, PSF licence: suites/README-calibration.md)
CALIBRATION_DOCS_FILE = SUITES / "calibration-docs-v1.txt"

DEFAULT_CALIB_TOKENS = 20_480
CALIB_WINDOW = 2_048
CACHE_FORMAT = "tokenforge-larosa-rotations"
CACHE_VERSION = 1


def pca_rotation(second_moment: torch.Tensor) -> torch.Tensor:
    """Orthogonal Q (H, H) whose columns are the eigenvectors of XᵀX, largest eigenvalue first.
    (The reference adds 1 % of the mean diagonal before ``eigh``: a multiple of the identity,
    which changes no eigenvector, so it is left out.)"""
    evals, evecs = torch.linalg.eigh(second_moment.double())
    order = torch.argsort(evals, descending=True)
    return evecs[:, order].to(torch.float32).contiguous()


def calibration_text() -> str:
    """The short shipped calibration text (also phrase-merge's)."""
    return CALIBRATION_FILE.read_text(encoding="utf-8")


def sparsity_calibration_text() -> str:
    """What the rotations are calibrated on by default: the documentation text alone. The short
    text is left out: it holds one of seed-v1's queries verbatim, and calibrating on a measured
    query would flatter the row."""
    return CALIBRATION_DOCS_FILE.read_text(encoding="utf-8")


def collect_second_moments(lm: LoadedModel, fwd: Any, ids: list[int], *,
                           window: int = CALIB_WINDOW, progress: Optional[ProgressFn] = None,
                           cancel: Optional[CancelToken] = None) -> dict[str, list[torch.Tensor]]:
    """Per rotated site and layer, XᵀX (fp64) of that input on the dense model over ``ids``
    (fresh windows of ``window`` tokens, as the reference feeds fixed-length sequences).

    A first calibration takes minutes on a CPU, so it reports (phase "calibrate") after every
    layer of every window — tokens done (step/total) and layers done of the current window — and
    checks ``cancel`` there, inside the forward, so a stop is seen within one layer."""
    sites = layer_sites(lm.model)
    h = lm.model.config.hidden_size
    acc = {s: [torch.zeros(h, h, dtype=torch.float64) for _ in sites] for s in ROTATED_SITES}
    if len(ids) < 2:
        raise InputError("calibration text is too short")
    window = max(2, min(window, lm.context_length))
    windows = -(-len(ids) // window)
    at = {"start": 0, "window": 0}  # the window being fed

    def tell(layers_done: int) -> None:
        n = min(window, len(ids) - at["start"])
        done = at["start"] + n * layers_done // len(sites)  # tokens through every layer so far
        report(progress, "calibrate", done, len(ids),
               f"calibrating LaRoSA rotations: window {at['window'] + 1}/{windows}, "
               f"layer {layers_done}/{len(sites)}",
               tokens=done, tokens_total=len(ids), layers=f"{layers_done}/{len(sites)}",
               window=f"{at['window'] + 1}/{windows}")

    def make(site: str, i: int):
        def pre(module: Any, args: tuple, kwargs: dict) -> None:
            x, _ = _first_input(args, kwargs)
            x = x.detach().reshape(-1, x.shape[-1]).float()
            acc[site][i] += (x.T @ x).double().cpu()
            if site == ROTATED_SITES[-1]:  # the layer's last collected input
                check(cancel)
                tell(i + 1)
        return pre

    handles = [mods[s].register_forward_pre_hook(make(s, i), with_kwargs=True)
               for i, mods in enumerate(sites) for s in ROTATED_SITES]
    try:
        for w, s in enumerate(range(0, len(ids), window)):
            check(cancel)
            at.update(start=s, window=w)
            tell(0)
            with torch.inference_mode():
                fwd.logits(torch.tensor([ids[s:s + window]], device=lm.torch_device),
                           fwd.new_cache(), keep=1)
    finally:
        for hd in handles:
            hd.remove()
    report(progress, "calibrate", len(ids), len(ids), "LaRoSA rotations: eigenvectors",
           tokens=len(ids), tokens_total=len(ids), layers=f"{len(sites)}/{len(sites)}",
           window=f"{windows}/{windows}")
    return acc


class _Sparsity(Method):
    """Shared: Top-K on the four projection inputs of every layer through forward pre-hooks;
    the measured zero fractions are kept per input and weighted to the model level."""

    model_changing = True
    speed_note = "n/a: no sparse kernel"
    rotated = False

    def __init__(self, sparsity: float = 0.4, **params: Any) -> None:
        valid = ["sparsity"] + (["calibration", "calib_tokens"] if self.rotated else [])
        reject_unknown(self.name, params, valid)
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) \
                or not 0.0 <= sparsity < 1.0:
            raise InputError(f"sparsity must be a number in [0, 1) (got {sparsity!r})")
        super().__init__(sparsity=float(sparsity))
        self.sparsity = float(sparsity)
        self._handles: list[Any] = []
        self._model: Any = None
        self._weights: list[dict[str, int]] = []
        self._head_weights = 0
        self._reset_counts()

    # ---- model change -----------------------------------------------------------------------
    def keep(self, h: int) -> int:
        return h - int(round(self.sparsity * h))

    def transform(self, i: int, site: str, x: torch.Tensor) -> torch.Tensor:
        z = topk_mask(x, self.keep(x.shape[-1]))
        self._count(i, site, z)
        return z

    def calibrate(self, lm: LoadedModel, *, progress: Optional[ProgressFn] = None,
                  cancel: Optional[CancelToken] = None) -> float:
        return 0.0

    def prepare(self, lm: LoadedModel, *, progress: Optional[ProgressFn] = None,
                cancel: Optional[CancelToken] = None) -> float:
        if self._handles and self._model is lm.model:
            return 0.0
        self.restore(lm)
        sites = layer_sites(lm.model)
        aux = self.calibrate(lm, progress=progress, cancel=cancel)

        def make(i: int, site: str):
            def pre(module: Any, args: tuple, kwargs: dict):
                x, put = _first_input(args, kwargs)
                return put(self.transform(i, site, x))
            return pre

        self._weights = site_weights(lm.model)
        head = lm.model.get_output_embeddings() if hasattr(lm.model, "get_output_embeddings") \
            else None
        self._head_weights = int(head.weight.numel()) if head is not None else 0
        self._handles = [mods[s].register_forward_pre_hook(make(i, s), with_kwargs=True)
                         for i, mods in enumerate(sites) for s in SITES]
        self._model = lm.model
        return aux

    def restore(self, lm: LoadedModel) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def prepared_on(self, lm: LoadedModel) -> bool:
        return bool(self._handles) and self._model is lm.model

    # ---- what was sparse --------------------------------------------------------------------
    def _reset_counts(self) -> None:
        self._zeros = {s: 0 for s in SITES}
        self._total = {s: 0 for s in SITES}
        self._skipped = {s: 0.0 for s in SITES}  # weight reads a sparse kernel would skip
        self._reads = {s: 0.0 for s in SITES}    # weight reads of the dense product
        self._tokens = 0

    def _count(self, i: int, site: str, z: torch.Tensor) -> None:
        """Zeros of the vector actually fed (in its own basis), weighted by the weights it meets."""
        zeros, n, width = int((z == 0).sum()), z.numel(), z.shape[-1]
        per_col = self._weights[i][site] / width  # weights per input coordinate
        self._zeros[site] += zeros
        self._total[site] += n
        self._skipped[site] += zeros * per_col
        self._reads[site] += n * per_col
        if i == 0 and site == "attn":
            self._tokens += n // width

    def measured_sparsity(self) -> Optional[float]:
        """Model level: skipped / all weight reads of the sparsified projections."""
        reads = sum(self._reads.values())
        return sum(self._skipped.values()) / reads if reads else None

    def sparsity_report(self) -> dict:
        """The target and measured sparsity per projection input and at model level."""
        by_site = {SITE_LABELS[s]: (self._zeros[s] / self._total[s] if self._total[s] else None)
                   for s in SITES}
        per_layer = [sum(w.values()) for w in self._weights] or [0]
        widths = self._site_widths()
        target_by = {SITE_LABELS[s]: (w - self.keep(w)) / w for s, w in widths.items()}
        tw = {s: sum(w[s] for w in self._weights) for s in SITES}
        target_model = (sum(target_by[SITE_LABELS[s]] * tw[s] for s in SITES) / sum(tw.values())
                        if sum(tw.values()) else None)
        reads = sum(self._reads.values())
        head = self._head_weights * self._tokens
        return {
            "sparsity_target": self.sparsity,
            "sparsity_target_model": target_model,
            "sparsity_target_by_projection": target_by,
            "sparsity_measured": self.measured_sparsity(),
            "sparsity_by_projection": by_site,
            "sparsity_all_weights": (sum(self._skipped.values()) / (reads + head)
                                     if reads else None),
            "sparsity_scope": ("q/k/v, o_proj, gate/up and down_proj inputs of all "
                               f"{len(self._weights)} layers ({sum(per_layer):,} weights); "
                               "embeddings and lm_head dense"),
            "rotated": self.rotated,
        }

    def _site_widths(self) -> dict[str, int]:
        if self._model is None:
            return {}
        layer = _decoder_layers(self._model)[0]
        return {"attn": layer.self_attn.q_proj.in_features, "o": layer.self_attn.o_proj.in_features,
                "mlp": layer.mlp.gate_proj.in_features, "down": layer.mlp.down_proj.in_features}

    # ---- measured calls ---------------------------------------------------------------------
    def run(self, lm: LoadedModel, q: Query, max_new_tokens: int, *,
            cancel: Optional[CancelToken] = None, sampling: Any = None,
            fixed_length: bool = False) -> MethodOutput:
        with self.active(lm):
            self._reset_counts()
            out = super().run(lm, q, max_new_tokens, cancel=cancel, sampling=sampling,
                              fixed_length=fixed_length)
            out.extra.update(self.sparsity_report())
        return out

    def teacher_forced_logprobs(self, lm: LoadedModel, q: Query, target_ids: list[int], *,
                                cancel: Optional[CancelToken] = None) -> torch.Tensor:
        with self.active(lm):
            return super().teacher_forced_logprobs(lm, q, target_ids, cancel=cancel)

    def nll_bits_per_byte(self, lm: LoadedModel, text: str, *,
                          cancel: Optional[CancelToken] = None) -> Optional[dict]:
        with self.active(lm):
            self._reset_counts()
            res = super().nll_bits_per_byte(lm, text, cancel=cancel)
            if res is not None:
                res.update(self.sparsity_report())
        return res


class MagnitudeSparsity(_Sparsity):
    name = "sparsity-magnitude"
    label = ("Activation sparsity: magnitude Top-K on every projection input "
             "(q/k/v, o, gate/up, down; TEAL-like, quality only)")
    simplification = ("TEAL-like: the same four inputs per layer as sparsity-rotated, but Top-K "
                      "per token instead of TEAL's calibrated per-tensor thresholds and one "
                      "sparsity for every input (no greedy per-layer allocation); no sparse "
                      "kernel, so a quality study (speed n/a)")


# model → {cache key: (rotations, tokens)}; weak so a freed model drops its rotations
_CALIB: "weakref.WeakKeyDictionary[Any, dict[str, tuple[dict[str, list[torch.Tensor]], int]]]" = \
    weakref.WeakKeyDictionary()


class RotatedSparsity(_Sparsity):
    name = "sparsity-rotated"
    label = ("Activation sparsity: LaRoSA, PCA-rotated Top-K on every projection input "
             "(q/k/v, o, gate/up, down; quality only)")
    simplification = ("quality only: no sparse kernel, so the rotation is applied and undone "
                      "around the dense matmul in fp32 (the same numbers as W·Q folded; the "
                      "reference rotates in fp64) and speed is n/a; calibrated on 20,480 tokens "
                      "of shipped Python documentation prose (no suite's text) instead of "
                      "WikiText-2; one Top-K sparsity for all four inputs (the reference's uniform "
                      "setting); o_proj and down_proj inputs unrotated, as in the reference code")
    rotated = True

    def __init__(self, sparsity: float = 0.4, calibration: Optional[str] = None,
                 calib_tokens: int = DEFAULT_CALIB_TOKENS, **params: Any):
        super().__init__(sparsity=sparsity, **params)
        if calibration is not None:
            if not isinstance(calibration, str) or not calibration.strip():
                raise InputError("calibration text must be a non-empty string")
            self.params["calibration_sha"] = hashlib.sha256(calibration.encode()).hexdigest()[:12]
        self.calib_tokens = int_param("calib_tokens", calib_tokens, 2)
        if calib_tokens != DEFAULT_CALIB_TOKENS:
            self.params["calib_tokens"] = self.calib_tokens
        self._text = calibration
        self.rotations: dict[str, list[torch.Tensor]] = {}
        self.calibration_tokens = 0
        self.calibration_sha = ""  # which text the rotations came from (records keep it)
        self.cache_file: Optional[Path] = None

    def cache_key(self, lm: LoadedModel, text: str) -> str:
        """What the rotations depend on: the weights, the text, the settings."""
        from engine.lm.weights_hash import weights_hash

        spec = {"format": CACHE_FORMAT, "version": CACHE_VERSION,
                "weights": weights_hash(lm.model),
                "text": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                "tokens": self.calib_tokens, "window": min(CALIB_WINDOW, lm.context_length),
                "sites": list(ROTATED_SITES), "dtype": str(next(lm.model.parameters()).dtype)}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]

    def calibrate(self, lm: LoadedModel, *, progress: Optional[ProgressFn] = None,
                  cancel: Optional[CancelToken] = None) -> float:
        from engine.bench.rotation_cache import load_rotations, rotations_path, save_rotations
        from engine.locks import FileLock

        text = self._text if self._text is not None else sparsity_calibration_text()
        key = self.cache_key(lm, text)
        self.calibration_sha = hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
        per_model = _CALIB.setdefault(lm.model, {})
        if key in per_model:
            self.rotations, self.calibration_tokens = per_model[key]
            return 0.0
        t0 = time.perf_counter()
        layers = len(layer_sites(lm.model))
        h = lm.model.config.hidden_size
        path = rotations_path(key)
        self.cache_file = path
        with FileLock(path, "activation-sparsity calibration", wait=None):
            got = load_rotations(path, key, layers, h, ROTATED_SITES)
            if got is None:
                ids = encode_user_text(lm.tokenizer, text)
                if len(ids) < self.calib_tokens:
                    raise InputError(f"calibration text has {len(ids):,} tokens; calib_tokens "
                                     f"asks for {self.calib_tokens:,}")
                ids = ids[:self.calib_tokens]
                moments = collect_second_moments(lm, self.forward(lm), ids, progress=progress,
                                                 cancel=cancel)
                rot = {s: [pca_rotation(m) for m in moments[s]] for s in ROTATED_SITES}
                save_rotations(path, key, rot, len(ids))
                got = (rot, len(ids))
        self.rotations, self.calibration_tokens = got
        per_model[key] = got
        return time.perf_counter() - t0

    def transform(self, i: int, site: str, x: torch.Tensor) -> torch.Tensor:
        if site not in ROTATED_SITES:
            return super().transform(i, site, x)
        q = self.rotations[site][i].to(device=x.device, dtype=x.dtype)
        z = topk_mask(x @ q, self.keep(x.shape[-1]))
        self._count(i, site, z)
        return z @ q.T

    def sparsity_report(self) -> dict:
        return {**super().sparsity_report(), "calibration_tokens": self.calibration_tokens,
                "calibration_text_sha": self.calibration_sha}
