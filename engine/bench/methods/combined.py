"""A combination of a prompt-side method and a cache-side method, run and measured as one
configuration (``prune-selfinfo+kv-fp8``): never a sum or product of the rows' separate savings.

The prompt side decides *what* is fed (its pruned document, its compressor time as ``aux_s``); the
cache side decides *how* it is cached and fed (FP8 storage, eviction with true positions) and how
the cache's bytes are counted. Model-changing methods (sparsity, phrase merge) touch more than
these two sides, so they are not PROMPT+CACHE pairs: ``all-combined`` (:class:`AllCombined`) runs
them with a prompt and a cache method at once.
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


# what "all combined" runs: one method per part, each of them composing with the others
ALL_PARTS = {
    "prompt": "prune-selfinfo",
    "cache": "hybrid-kv",
    "model": "sparsity-rotated",
    "vocab": "phrase-merge",
}


class AllCombined(Combined):
    """Every method that composes, applied at once and measured whole (never a sum of the rows'
    separate savings): word pruning decides what is fed, phrase merge how the pruned prompt is
    tokenized (its untrained rows appended to the model), the cache part how it is cached (the
    seed's hybrid: one contiguous reservation, CAKE's evicted slots reused in it), rotated
    activation sparsity changes the layers. Left out because they cannot run together
    with those: another cache method beside the cache part (one cache holds the KV), kv-reuse
    (it needs a prefix cached by an earlier turn, which pruning changes). Parameters:
    ``prompt.KEY``, ``cache.KEY``, ``model.KEY``, ``vocab.KEY``.

    How the parts meet (docs/bench-methods.md, "All combined"):

    - prompt: the document is pruned first, the pruner scoring words over the model's own
      vocabulary (phrase merge's ids are not its to score), then the pruned prompt is encoded
      with the merged vocabulary: what is fed, its length measured (``prompt_tokens_pruned``
      beside ``prompt_tokens_effective``, both from the same run);
    - model: sparsity is prepared first, on the model as loaded (its calibration and the key of
      its cached rotations see the loaded weights), then the merged rows; ``restore`` undoes
      them in reverse order. The hooks sit inside the decoder layers, which read hidden states,
      never token ids, so the extra rows do not reach them;
    - output: generated ids (merged ones included) decode through phrase merge's detokenizer;
    - quality: phrase merge's rule, compared only at positions both tokenizations predict, its
      distribution folded onto the base vocabulary; reference NLL per base token."""

    def __init__(self, parts: dict[str, Method]) -> None:
        super().__init__(parts["prompt"], parts["cache"])
        self.m, self.v = parts["model"], parts["vocab"]
        self.parts = dict(parts)
        if self.c.forward_path != "standard":
            # the merged rows live in the model's embedding and head modules: a forward that
            # reads the weights itself would never see them
            raise InputError(f"all-combined: the cache part {self.c.name} runs on the "
                             f"{self.c.forward_path!r} forward; phrase merge's rows need the "
                             "standard one")
        self.name = "all-combined"
        self.label = (f"All combined: {self.p.name} + {self.c.name} + {self.m.name} + "
                      f"{self.v.name} (untrained) (every method that composes, measured together)")
        self.simplification = (
            "each part as simplified in its own row; together: the document is pruned first "
            "(the pruner scores words over the model's own vocabulary), then the pruned prompt is "
            "encoded with phrase merge's vocabulary, learned from the suite's unpruned domain "
            f"material; one cache method ({self.c.label}); no kv-reuse (pruning changes the "
            "prefix an earlier turn cached)")
        self.model_changing = True
        self.speed_note = self.m.speed_note
        self._active_model: Any = None
        self._pruned_tokens: Optional[int] = None
        self._fed: list[int] = []
        self._set_params()

    def _set_params(self) -> None:
        self.params = {f"{k}.{pk}": pv for k, part in self.parts.items()
                       for pk, pv in part.params.items()}

    def use_suite(self, suite: Any) -> None:
        for part in self.parts.values():
            part.use_suite(suite)
        self._set_params()  # phrase merge names the domain it learns from

    # ---- model changes: sparsity first, then the merged rows; undone in reverse ------------
    def prepare(self, lm: LoadedModel, *, progress: Any = None, cancel: Any = None) -> float:
        total = 0.0
        try:
            for part in (self.m, self.v, self.p, self.c):
                total += float(part.prepare(lm, progress=progress, cancel=cancel) or 0.0)
        except BaseException:
            self.restore(lm)
            raise
        # the all-weights sparsity counts the head's reads per token: the appended rows too
        head = lm.model.get_output_embeddings()
        extra = getattr(head, "extra", None)
        if hasattr(self.m, "_head_weights") and torch.is_tensor(extra):
            self.m._head_weights = int(head.weight.numel() + extra.numel())
        self._active_model = lm.model
        return total

    def restore(self, lm: LoadedModel) -> None:
        for part in (self.c, self.p, self.v, self.m):
            part.restore(lm)
        self._active_model = None

    def prepared_on(self, lm: LoadedModel) -> bool:
        return self._active_model is lm.model

    # ---- what is fed: pruned, then merged ----------------------------------------------------
    def render_prompt(self, lm: LoadedModel, q: Query) -> list[int]:
        base = self.p.render_prompt(lm, q)
        self._pruned_tokens = len(base)
        self._fed = self.v.merged_ids(lm, base)
        return list(self._fed)

    def new_state(self, lm: LoadedModel, q: Query, prompt_ids: list[int]) -> GenState:
        st = super().new_state(lm, q, prompt_ids)
        st.info["prompt_tokens_pruned"] = self._pruned_tokens  # base tokens after pruning
        return st

    def detokenizer(self, lm: LoadedModel) -> Any:
        return self.v.detokenizer(lm)

    def base_token_ids(self, ids: list[int]) -> list[int]:
        return self.v.base_token_ids(ids)

    # ---- measured calls ----------------------------------------------------------------------
    def run(self, lm: LoadedModel, q: Query, max_new_tokens: int, *, cancel: Any = None,
            sampling: Any = None, fixed_length: bool = False):
        """As measured whole; beside it the model part's sparsity (per projection input and at
        model level) and the vocabulary part's figures, with the prompt tokens each step saved:
        pruning (full → pruned base tokens) and merging (pruned → fed), from this run."""
        with self.active(lm):
            counts = getattr(self.m, "sparsity_report", None)
            if counts is not None:
                self.m._reset_counts()
            out = super().run(lm, q, max_new_tokens, cancel=cancel, sampling=sampling,
                              fixed_length=fixed_length)
            if counts is not None:
                out.extra.update(counts())
            out.extra.update(self.v.figures(lm, out, self._fed))
        full, fed = out.cost["prompt_tokens_in"], out.cost["prompt_tokens_effective"]
        pruned = out.extra.get("prompt_tokens_pruned")
        if pruned is not None:
            out.extra.update(tokens_saved_pruning=full - pruned, tokens_saved_merging=pruned - fed)
        return out

    def teacher_forced_logprobs(self, lm: LoadedModel, q: Query, target_ids: list[int], *,
                                cancel: Any = None) -> torch.Tensor:
        """(T, V + M) log-probs over the merged vocabulary after the pruned, merged prompt."""
        with self.active(lm):
            return super().teacher_forced_logprobs(lm, q, target_ids, cancel=cancel)

    def fidelity_logprobs(self, lm: LoadedModel, q: Query, ref_ids: list[int], *,
                          cancel: Any = None) -> tuple[torch.Tensor, list[int]]:
        """Phrase merge's comparable positions (``phrase_vocab.comparable_logprobs``)."""
        from .phrase_vocab import comparable_logprobs

        with self.active(lm):
            return comparable_logprobs(self.v.vocabulary(lm), ref_ids,
                                       lambda ids: self.teacher_forced_logprobs(lm, q, ids,
                                                                                cancel=cancel))

    def answer_nll(self, lm: LoadedModel, q: Query, answer: str, *,
                   cancel: Any = None) -> Optional[float]:
        """Nats per base token of the reference, merged the vocabulary part's way."""
        from engine.lm.templates import encode_user_text
        from .phrase_vocab import nll_per_base_token

        with self.active(lm):
            return nll_per_base_token(self.v.vocabulary(lm),
                                      encode_user_text(lm.tokenizer, answer),
                                      lambda ids: self.teacher_forced_logprobs(lm, q, ids,
                                                                               cancel=cancel))

    def nll_bits_per_byte(self, lm: LoadedModel, text: str, *,
                          cancel: Any = None) -> Optional[dict]:
        """Held-out prose encoded with the merged vocabulary, through the model with every
        part's change (bits per byte comparable across tokenizations), with the sparsity."""
        with self.active(lm):
            counts = getattr(self.m, "sparsity_report", None)
            if counts is not None:
                self.m._reset_counts()
            res = self.v.nll_bits_per_byte(lm, text, cancel=cancel)
            if res is not None and counts is not None:
                res.update(counts())
        return res


def make_all(make: Any, **params: Any) -> AllCombined:
    """``all-combined`` from the registry's ``make``; ``PART.KEY`` parameters (``prompt``,
    ``cache``, ``model``, ``vocab``) go to the part they name."""
    side = split_params(params, ALL_PARTS, "all-combined",
                        "its parameters are " + ", ".join(f"{k}.KEY" for k in ALL_PARTS))
    return AllCombined({k: make(n, **side[k]) for k, n in ALL_PARTS.items()})
