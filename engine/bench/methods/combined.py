"""A combination of a prompt-side method and a cache-side method, run and measured as one
configuration (``prune-selfinfo+kv-fp8``): never a sum or product of the rows' separate savings.

The prompt side decides *what* is fed (its pruned document, its compressor time as ``aux_s``); the
cache side decides *how* it is cached and fed (FP8 storage, eviction with true positions) and how
the cache's bytes are counted. Model-changing methods (sparsity, phrase merge) and conversation
reuse are not combinable here: their effects touch both sides.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch

from engine.errors import InputError
from .combos import CACHE_SIDE, PROMPT_SIDE, split_combination
from .base import GenState, Method, Query

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


class Combined(Method):
    """``prompt`` + ``cache`` as one method. Parameters: ``prompt.KEY`` / ``cache.KEY`` go to the
    side they name (e.g. ``--param prune-selfinfo+evict-sinks.cache.budget=64``)."""

    def __init__(self, prompt: Method, cache: Method, **params: Any) -> None:
        super().__init__(**params)
        self.p, self.c = prompt, cache
        self.name = f"{prompt.name}+{cache.name}"
        self.label = f"{prompt.label} + {cache.label} (measured together)"
        self.model_changing = False
        self.forward_path = cache.forward_path
        self.tf_chunked = cache.tf_chunked
        self.params = {**{f"prompt.{k}": v for k, v in prompt.params.items()},
                       **{f"cache.{k}": v for k, v in cache.params.items()}}

    def use_suite(self, suite: Any) -> None:
        self.p.use_suite(suite)
        self.c.use_suite(suite)

    # model changes: neither side makes any, but keep the contract
    def prepare(self, lm: LoadedModel, *, progress: Any = None, cancel: Any = None) -> float:
        return float(self.p.prepare(lm, progress=progress, cancel=cancel) or 0.0) + \
            float(self.c.prepare(lm, progress=progress, cancel=cancel) or 0.0)

    def restore(self, lm: LoadedModel) -> None:
        self.c.restore(lm)
        self.p.restore(lm)

    # what is fed: the prompt side
    def document_text(self, lm: LoadedModel, q: Query) -> Optional[str]:
        return self.p.document_text(lm, q)

    def render_prompt(self, lm: LoadedModel, q: Query) -> list[int]:
        return self.p.render_prompt(lm, q)

    # how it is cached: the cache side, with the prompt side's figures (full prompt, aux time)
    def forward(self, lm: LoadedModel) -> Any:
        return self.c.forward(lm)

    def new_state(self, lm: LoadedModel, q: Query, prompt_ids: list[int]) -> GenState:
        st = self.c.new_state(lm, q, prompt_ids)
        ref = self.p.new_state(lm, q, [])  # the prompt side's bookkeeping only (no forward)
        st.prompt_tokens_in = ref.prompt_tokens_in
        st.info.update(ref.info)
        return st

    def feed(self, lm: LoadedModel, st: GenState, ids: list[int], keep: int = 1) -> torch.Tensor:
        return self.c.feed(lm, st, ids, keep=keep)

    def kv_bytes(self, st: GenState) -> int:
        return self.c.kv_bytes(st)

    def kv_bytes_peak(self, st: GenState) -> Optional[int]:
        return self.c.kv_bytes_peak(st)

    def run(self, lm: LoadedModel, q: Query, max_new_tokens: int, *, cancel: Any = None,
            sampling: Any = None, fixed_length: bool = False):
        out = super().run(lm, q, max_new_tokens, cancel=cancel, sampling=sampling,
                              fixed_length=fixed_length)
        out.extra = {k: v for k, v in out.extra.items() if not k.startswith("_")}
        return out


def make_combined(name: str, make: Any, **params: Any) -> Combined:
    """``a+b`` → Combined(make(a), make(b)); an invalid pairing is one InputError saying why."""
    parts = split_combination(name)
    if parts is None:
        raise InputError(f"cannot combine {name!r}",
                         f"a combination is PROMPT+CACHE with PROMPT in {', '.join(PROMPT_SIDE)} "
                         f"and CACHE in {', '.join(CACHE_SIDE)}, e.g. prune-selfinfo+kv-fp8")
    side = split_params(params, ("prompt", "cache"), name,
                        "combination parameters are prompt.KEY or cache.KEY")
    return Combined(make(parts[0], **side["prompt"]), make(parts[1], **side["cache"]))


def split_params(params: dict[str, Any], sides: Any, name: str, hint: str) -> dict[str, dict]:
    """``SIDE.KEY`` parameters sorted to the side they name (one InputError for any other)."""
    side: dict[str, dict] = {k: {} for k in sides}
    for k, v in params.items():
        where, dot, key = k.partition(".")
        if not dot or where not in side:
            raise InputError(f"unknown parameter {k!r} for {name}", hint)
        side[where][key] = v
    return side


# what "all combined" runs: one method per side that composes with the others
ALL_PARTS = {"prompt": "prune-selfinfo", "cache": "evict-cake", "model": "sparsity-rotated"}


class AllCombined(Combined):
    """Every method that composes, applied at once and measured whole (never a sum of the rows'
    separate savings): word pruning decides what is fed, CAKE how it is cached, rotated
    activation sparsity changes the model. Left out because they cannot run together with
    those: kv-fp8 and kv-contiguous (another cache instead of the evicting one), phrase-merge
    (it re-encodes the unpruned prompt with its own vocabulary), kv-reuse (it needs a prefix
    cached by an earlier turn, which pruning changes). Parameters: ``prompt.KEY``,
    ``cache.KEY``, ``model.KEY``."""

    simplification = ("the seed's combination minus what cannot compose here: one cache method "
                      "(CAKE; no FP8 or contiguous buffer beside eviction) and no phrase-merge")

    def __init__(self, parts: dict[str, Method]) -> None:
        super().__init__(parts["prompt"], parts["cache"])
        self.m = parts["model"]
        self.name = "all-combined"
        self.label = (f"All combined: {self.p.name} + {self.c.name} + {self.m.name} "
                      "(every method that composes, measured together)")
        self.model_changing = True
        self.speed_note = self.m.speed_note
        self.params = {**self.params, **{f"model.{k}": v for k, v in self.m.params.items()}}

    def use_suite(self, suite: Any) -> None:
        super().use_suite(suite)
        self.m.use_suite(suite)

    def prepare(self, lm: LoadedModel, *, progress: Any = None, cancel: Any = None) -> float:
        return float(self.m.prepare(lm, progress=progress, cancel=cancel) or 0.0) + \
            super().prepare(lm, progress=progress, cancel=cancel)

    def restore(self, lm: LoadedModel) -> None:
        super().restore(lm)
        self.m.restore(lm)

    def run(self, lm: LoadedModel, q: Query, max_new_tokens: int, *, cancel: Any = None,
            sampling: Any = None, fixed_length: bool = False):
        """As measured whole; the model part's sparsity (per projection input and at model
        level) is reported beside it."""
        counts = getattr(self.m, "sparsity_report", None)
        if counts is not None:
            self.m._reset_counts()
        out = super().run(lm, q, max_new_tokens, cancel=cancel, sampling=sampling,
                          fixed_length=fixed_length)
        if counts is not None:
            out.extra.update(counts())
        return out


def make_all(make: Any, **params: Any) -> AllCombined:
    """``all-combined`` from the registry's ``make``; ``prompt.KEY`` / ``cache.KEY`` /
    ``model.KEY`` parameters go to the side they name."""
    side = split_params(params, ALL_PARTS, "all-combined",
                        "its parameters are prompt.KEY, cache.KEY or model.KEY")
    return AllCombined({k: make(n, **side[k]) for k, n in ALL_PARTS.items()})
