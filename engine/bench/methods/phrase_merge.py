"""Phrase-merge vocabulary, AdaptiVocab-style and UNTRAINED: frequent multi-token phrases of the
suite's domain become new vocabulary entries, with no fine-tuning (docs/bench-methods.md).

Learning (AdaptiVocab's selection, applied like BPE): from the suite's domain material (held-out
examples in the suite's own format, ``engine/bench/suites/domain/<suite>.jsonl``; never a measured
query) rendered exactly as prompts are rendered, repeatedly take the 2–``max_n``-token n-gram that
saves the most tokens, count × (n − 1) with count ≥ ``min_count`` non-overlapping occurrences
(no special tokens, no line breaks, not made of digits only, never across two examples), replace
those occurrences by a new id and count again — so an n-gram that overlapped a chosen one loses
exactly the occurrences the replacement consumed — up to ``max_phrases`` times. Encoding applies
the merges in learned order; decoding expands every new id into its base parts first (the
vocabulary itself: ``phrase_vocab.py``).

The model change is reversible and copy-free: the input embedding and the output head are wrapped
by modules that append the new rows, and ``restore`` puts the original modules back. New rows
follow AdaptiVocab's exponential weighting over the parts' positions (weights 2^-k, normalised):
the input row leans on the *last* part (the position whose embedding the next step would have
seen), the output row on the *first* part (the token the model would have emitted next). The two
differ, so a model with tied embeddings gets two separate appended tables. ``init="mean"`` gives
the plain mean of the parts (the ablation). The tokenizer itself is never modified.

Untrained new tokens cost quality (AdaptiVocab fine-tunes them): the row is labelled untrained and
always shown with its bits per byte (comparable across tokenizers) beside the tokens it saves.
Fidelity to the baseline is measured where the two tokenizations can be compared: see
:meth:`PhraseMerge.fidelity_logprobs`.
"""
from __future__ import annotations

import hashlib
import time
import weakref
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
from torch import nn

from engine.errors import InputError
from engine.progress import CancelToken, ProgressFn
from engine.lm.templates import encode_user_text
from .base import GenState, Method, MethodOutput, Query, render_chat, text_nll
from .params import reject_unknown
from .phrase_vocab import (MergedDetokenizer, PhraseVocab, comparable_logprobs, learn_merges,
                           nll_per_base_token)

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

#: AdaptiVocab's decay of the weights over the parts' positions (each part half the next one's)
DECAY = 0.5
INITS = ("exp", "mean")


def exp_weights(n: int, *, heavy_end: bool) -> torch.Tensor:
    """AdaptiVocab's weights over n parts: DECAY**k normalised to sum 1, the largest on the last
    part (``heavy_end``, input side) or on the first (output side). float64."""
    w = torch.tensor([DECAY ** k for k in range(n)], dtype=torch.float64)
    if heavy_end:
        w = w.flip(0)
    return w / w.sum()


def init_rows(weight: torch.Tensor, vocab: PhraseVocab, *, side: str, init: str = "exp") -> torch.Tensor:
    """(M, H) rows for the new ids from ``weight``'s rows of their base parts: the exponential
    weighting of ``side`` ("input": heavy last part, "output": heavy first part) or the mean."""
    if side not in ("input", "output") or init not in INITS:
        raise ValueError(f"side {side!r} / init {init!r}")
    rows = []
    for k in range(len(vocab.merges)):
        parts = vocab.parts(vocab.new_id(k))
        w = (exp_weights(len(parts), heavy_end=side == "input") if init == "exp"
             else torch.full((len(parts),), 1.0 / len(parts), dtype=torch.float64))
        rows.append((w.to(weight.device).unsqueeze(1) * weight[parts].double()).sum(0))
    if not rows:
        return weight.detach()[:0].clone()
    return torch.stack(rows).to(weight.dtype)


class ExtendedEmbedding(nn.Module):
    """The original embedding plus appended rows for ids ≥ its size (no copy of the table)."""

    def __init__(self, base: nn.Embedding, extra: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.extra = extra
        self.num_base = base.weight.shape[0]
        self.weight = base.weight  # for code that inspects .weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        new = ids >= self.num_base
        out = self.base(ids.clamp(max=self.num_base - 1))
        if bool(new.any()):
            out = out.clone()
            out[new] = self.extra[ids[new] - self.num_base].to(out.dtype)
        return out


class ExtendedHead(nn.Module):
    """The original output head plus logits for the appended rows."""

    def __init__(self, base: nn.Module, extra: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.extra = extra
        self.weight = base.weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        base = self.base(h)
        if self.extra.shape[0] == 0:
            return base
        return torch.cat([base, h @ self.extra.to(h.dtype).T], dim=-1)


def domain_sequences(tokenizer: Any, method: Method, examples: Sequence[Query]) -> list[list[int]]:
    """The domain examples as the method's prompts are rendered (chat template, the suite's
    system prompt and document wrapper), each followed by its reply's tokens."""
    out = []
    for q in examples:
        ids = render_chat(tokenizer, method.messages(q, q.document))
        if q.reference:
            ids = ids + encode_user_text(tokenizer, q.reference)
        out.append(ids)
    return out


# tokenizer → {material sha + settings: PhraseVocab}
_LEARNED: "weakref.WeakKeyDictionary[Any, dict[str, PhraseVocab]]" = weakref.WeakKeyDictionary()


class PhraseMerge(Method):
    name = "phrase-merge"
    label = ("Phrase-merge vocabulary (AdaptiVocab-style, UNTRAINED: no fine-tuning; merges "
             "learned per suite domain, exponential-weighting init)")
    simplification = ("untrained: AdaptiVocab fine-tunes the new embeddings, here they keep "
                      "their exponential-weighting init; the vocabulary grows (new ids appended) "
                      "instead of swapping out the least useful tokens; merges come from a few "
                      "thousand tokens of the suite's held-out domain material (the paper uses a "
                      "domain corpus) and may span words; overlaps are handled by exact recounting "
                      "after each merge rather than the reference code's decrement estimates")
    model_changing = True
    tf_chunked = True  # a plain cache on the standard forward, as the baseline's reference

    def __init__(self, max_phrases: int = 64, min_count: int = 2, max_n: int = 4,
                 init: str = "exp", calibration: Optional[str] = None, **params: Any) -> None:
        reject_unknown(self.name, params, ["max_phrases", "min_count", "max_n", "init",
                                           "calibration"])
        for nm, v, lo in (("max_phrases", max_phrases, 0), ("min_count", min_count, 2),
                          ("max_n", max_n, 2)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InputError(f"{nm} must be an integer >= {lo} (got {v!r})")
        if init not in INITS:
            raise InputError(f"init must be one of {', '.join(INITS)} (got {init!r})")
        if calibration is not None and (not isinstance(calibration, str) or not calibration.strip()):
            raise InputError("calibration text must be a non-empty string")
        super().__init__(max_phrases=max_phrases, min_count=min_count, max_n=max_n, init=init)
        self._text = calibration
        self._examples: Optional[list[Query]] = None
        if calibration is not None:
            self.params["domain"] = "text:" + hashlib.sha256(calibration.encode()).hexdigest()[:12]
        else:
            self.params["domain"] = "calibration-v1"  # until a suite with domain material is bound
        self.vocab: Optional[PhraseVocab] = None
        self._saved: Optional[tuple[Any, Any]] = None
        self._model: Any = None

    def use_suite(self, suite: Any) -> None:
        """Learn from the suite's domain material (unless a text was given explicitly)."""
        examples = getattr(suite, "domain", None)
        if self._text is not None or not examples:
            return
        self._examples = list(examples)
        self.params["domain"] = f"{suite.name}:{getattr(suite, 'domain_sha', '')}"
        self.vocab = None

    # ---- vocabulary and model change --------------------------------------------------------
    def _material(self, lm: LoadedModel) -> tuple[str, list[list[int]]]:
        if self._examples is not None:
            seqs = domain_sequences(lm.tokenizer, self, self._examples)
        else:
            from .act_sparsity import calibration_text

            text = self._text if self._text is not None else calibration_text()
            seqs = [encode_user_text(lm.tokenizer, text)]
        h = hashlib.sha256(repr(seqs).encode()).hexdigest()
        return h, seqs

    def learn(self, lm: LoadedModel, cancel: Optional[CancelToken] = None) -> float:
        t0 = time.perf_counter()
        sha, seqs = self._material(lm)
        key = sha + repr((self.params["max_phrases"], self.params["min_count"],
                          self.params["max_n"]))
        per_tok = _LEARNED.setdefault(lm.tokenizer, {})
        base = lm.model.get_input_embeddings().weight.shape[0]
        got = per_tok.get(key)
        if got is not None and got.base_size == base:
            self.vocab = got
            return 0.0
        self.vocab = learn_merges(lm.tokenizer, seqs, base,
                                  max_phrases=self.params["max_phrases"],
                                  min_count=self.params["min_count"], max_n=self.params["max_n"],
                                  cancel=cancel)
        per_tok[key] = self.vocab
        return time.perf_counter() - t0

    def vocabulary(self, lm: LoadedModel) -> PhraseVocab:
        """The merged vocabulary, learned on first use."""
        if self.vocab is None:
            self.learn(lm)
        return self.vocab

    def prepare(self, lm: LoadedModel, *, progress: Optional[ProgressFn] = None,
                cancel: Optional[CancelToken] = None) -> float:
        if self._saved is not None and self._model is lm.model:
            return 0.0
        self.restore(lm)
        aux = self.learn(lm, cancel) if self.vocab is None else 0.0
        t0 = time.perf_counter()
        model = lm.model
        emb = model.get_input_embeddings()
        head = model.get_output_embeddings()
        if not isinstance(emb, nn.Embedding) or head is None or not hasattr(head, "weight"):
            raise InputError(f"{getattr(lm, 'name', 'model')}: phrase merge needs a plain "
                             "embedding table and output head")
        init = self.params["init"]
        with torch.no_grad():
            # separate tables even for tied embeddings: the two sides weight the parts differently
            extra_in = init_rows(emb.weight, self.vocab, side="input", init=init)
            extra_out = init_rows(head.weight, self.vocab, side="output", init=init)
        self._saved = (emb, head)
        self._model = model
        model.set_input_embeddings(ExtendedEmbedding(emb, extra_in))
        model.set_output_embeddings(ExtendedHead(head, extra_out))
        return aux + time.perf_counter() - t0

    def restore(self, lm: LoadedModel) -> None:
        if self._saved is None:
            return
        emb, head = self._saved
        self._model.set_input_embeddings(emb)
        self._model.set_output_embeddings(head)
        self._saved = None
        self._model = None

    def prepared_on(self, lm: LoadedModel) -> bool:
        return self._saved is not None and self._model is lm.model

    # ---- encoding and decoding --------------------------------------------------------------
    def encode(self, lm: LoadedModel, text: str) -> list[int]:
        return self.vocabulary(lm).encode_ids(encode_user_text(lm.tokenizer, text))

    def decode(self, lm: LoadedModel, ids: Sequence[int]) -> str:
        return self.detokenizer(lm).decode(list(ids), skip_special_tokens=True)

    def detokenizer(self, lm: LoadedModel) -> Any:
        return MergedDetokenizer(lm.tokenizer, self.vocabulary(lm))

    def merged_ids(self, lm: LoadedModel, ids: Sequence[int]) -> list[int]:
        """Base-vocabulary ids → this vocabulary's (the merges applied in learned order)."""
        return self.vocabulary(lm).encode_ids(ids)

    def render_prompt(self, lm: LoadedModel, q: Query) -> list[int]:
        return self.merged_ids(lm, render_chat(lm.tokenizer, self.messages(q, q.document)))

    def new_state(self, lm: LoadedModel, q: Query, prompt_ids: list[int]) -> GenState:
        st = super().new_state(lm, q, prompt_ids)
        st.prompt_tokens_in = len(render_chat(lm.tokenizer, self.messages(q, q.document)))
        return st

    def base_token_ids(self, ids: list[int]) -> list[int]:
        return self.vocab.expand(ids) if self.vocab is not None else ids

    # ---- measured calls ---------------------------------------------------------------------
    def run(self, lm: LoadedModel, q: Query, max_new_tokens: int, *,
            cancel: Optional[CancelToken] = None, sampling: Any = None,
            fixed_length: bool = False) -> MethodOutput:
        with self.active(lm):
            out = super().run(lm, q, max_new_tokens, cancel=cancel, sampling=sampling,
                              fixed_length=fixed_length)
        out.extra.update(self.figures(lm, out, self.render_prompt(lm, q)))
        return out

    def figures(self, lm: LoadedModel, out: MethodOutput, prompt_ids: Sequence[int]) -> dict:
        """What a run with this vocabulary records beside its cost: the phrases its prompt used,
        how many merged ids it generated, the prompt tokens it saved (full prompt − fed)."""
        v = self.vocabulary(lm)
        new = sum(1 for t in out.token_ids if t >= v.base_size)
        return {"phrases_in_prompt": self.phrases_used(lm, prompt_ids),
                "phrases": len(v.merges), "new_tokens_generated": new,
                "new_token_rate": new / len(out.token_ids) if out.token_ids else None,
                "tokens_saved": out.cost["prompt_tokens_in"] - out.cost["prompt_tokens_effective"],
                "output_base_tokens": len(v.expand(out.token_ids)), "domain": self.params["domain"]}

    def phrases_used(self, lm: LoadedModel, ids: Sequence[int]) -> dict[str, int]:
        """Which merged phrases a token sequence uses and how often (text → count), most
        frequent first: what the merged prompt looks like, for the record."""
        v = self.vocabulary(lm)
        counts: dict[str, int] = {}
        for t in ids:
            if t >= v.base_size:
                text = lm.tokenizer.decode(v.parts(t))
                counts[text] = counts.get(text, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def teacher_forced_logprobs(self, lm: LoadedModel, q: Query, target_ids: list[int], *,
                                cancel: Optional[CancelToken] = None) -> torch.Tensor:
        """(T, V + M) log-probs over the merged vocabulary, ``target_ids`` (merged or base ids)
        fed one by one after the merged prompt."""
        with self.active(lm):
            return super().teacher_forced_logprobs(lm, q, target_ids, cancel=cancel)

    def fidelity_logprobs(self, lm: LoadedModel, q: Query, ref_ids: list[int], *,
                          cancel: Optional[CancelToken] = None) -> tuple[torch.Tensor, list[int]]:
        """The baseline's continuation as this method tokenizes it (merged), fed after the
        merged prompt; only the positions where a merged token starts are compared, its
        distribution folded onto the base vocabulary (``phrase_vocab.comparable_logprobs``)."""
        return comparable_logprobs(self.vocabulary(lm), ref_ids,
                                   lambda ids: self.teacher_forced_logprobs(lm, q, ids, cancel=cancel))

    def answer_nll(self, lm: LoadedModel, q: Query, answer: str, *,
                   cancel: Optional[CancelToken] = None) -> Optional[float]:
        """The reference answer as this method tokenizes it: nats per base token of the same
        text (``phrase_vocab.nll_per_base_token``), comparable with the baseline's figure."""
        return nll_per_base_token(self.vocabulary(lm), encode_user_text(lm.tokenizer, answer),
                                  lambda ids: self.teacher_forced_logprobs(lm, q, ids, cancel=cancel))

    def nll_bits_per_byte(self, lm: LoadedModel, text: str, *,
                          cancel: Optional[CancelToken] = None) -> Optional[dict]:
        """Held-out NLL under the merged vocabulary (softmax over all of it); bits per byte is
        the comparable figure since token counts differ."""
        with self.active(lm):
            ids = self.encode(lm, text)
            res = text_nll(lm, self.forward(lm), ids, text, cancel=cancel)
        if res is not None:
            base = len(encode_user_text(lm.tokenizer, text))
            res.update(tokens_original=base, tokens_merged=len(ids),
                       tokens_saved_pct=100.0 * (base - len(ids)) / base if base else None,
                       phrases=len(self.vocab.merges))
        return res
