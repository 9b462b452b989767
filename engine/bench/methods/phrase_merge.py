"""Phrase-merge tokenizer (untrained, experimental): frequent multi-token phrases become new

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel
vocabulary entries whose embeddings are the mean of their parts, with no fine-tuning.

Learning (AdaptiVocab-like selection, BPE-like application): on a shipped calibration text
(``engine/bench/suites/calibration-v1.txt``, distinct from the held-out prose) repeatedly take the
2–4-token n-gram that saves the most tokens ((n − 1) · count, count ≥ ``min_count``, no special
or line-break tokens), replace its non-overlapping occurrences by a new id, and repeat up to
``max_phrases`` times. Encoding applies the merges in the same order; decoding expands them.

The model change is reversible and copy-free: the input embedding and the output head are wrapped
by modules that append the new rows (input row = mean of the parts' input rows; output row =
mean of the parts' output rows, which for tied embeddings is the same tensor), and ``restore``
puts the original modules back. The tokenizer itself is never modified.

Untrained new tokens cost quality (AdaptiVocab fine-tunes them): this row is always shown with its
bits per byte (comparable across tokenizers) next to the tokens it saves.
"""
from __future__ import annotations

import contextlib
import hashlib
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Optional

import torch
from torch import nn

from engine.errors import InputError
from engine.progress import CancelToken, ProgressFn, check
from engine.lm.templates import encode_user_text
from .act_sparsity import calibration_text
from .base import GenState, Method, MethodOutput, Query, render_chat, text_nll
from .params import reject_unknown


@dataclass
class PhraseVocab:
    """Merges in learned order: new id → the pair/tuple of ids it replaces."""

    base_size: int
    merges: list[tuple[int, ...]] = field(default_factory=list)

    def new_id(self, k: int) -> int:
        return self.base_size + k

    def parts(self, tid: int) -> list[int]:
        """Base-vocabulary ids a (possibly nested) merged id stands for."""
        if tid < self.base_size:
            return [tid]
        out: list[int] = []
        for p in self.merges[tid - self.base_size]:
            out.extend(self.parts(p))
        return out

    def expand(self, ids: list[int]) -> list[int]:
        out: list[int] = []
        for t in ids:
            out.extend(self.parts(int(t)))
        return out

    def encode_ids(self, ids: list[int]) -> list[int]:
        """Apply every merge in learned order (non-overlapping, left to right)."""
        seq = list(ids)
        for k, gram in enumerate(self.merges):
            seq = _replace(seq, gram, self.new_id(k))
        return seq


def _replace(seq: list[int], gram: tuple[int, ...], new: int) -> list[int]:
    n = len(gram)
    out: list[int] = []
    i = 0
    first = gram[0]
    while i < len(seq):
        if seq[i] == first and tuple(seq[i:i + n]) == gram:
            out.append(new)
            i += n
        else:
            out.append(seq[i])
            i += 1
    return out


def _count_nonoverlapping(seq: list[int], n: int, banned: set[int]) -> Counter:
    """Non-overlapping (left to right) occurrences of every n-gram free of ``banned`` ids."""
    counts: Counter = Counter()
    last_end: dict[tuple, int] = {}
    for i in range(len(seq) - n + 1):
        gram = tuple(seq[i:i + n])
        if any(t in banned for t in gram):
            continue
        if last_end.get(gram, -1) > i:
            continue
        counts[gram] += 1
        last_end[gram] = i + n
    return counts


def learn_phrases(tokenizer: Any, text: str, base_size: int, *, max_phrases: int = 64,
                  min_count: int = 2, max_n: int = 4,
                  cancel: Optional[CancelToken] = None) -> PhraseVocab:
    """Greedy phrase merges on ``text`` (see the module docstring)."""
    seq = encode_user_text(tokenizer, text)
    banned = set(int(t) for t in getattr(tokenizer, "all_special_ids", []) or [])
    for t in set(seq):
        if "\n" in tokenizer.decode([t]):
            banned.add(t)
    vocab = PhraseVocab(base_size=base_size)
    for _ in range(max_phrases):
        check(cancel)
        best: tuple[int, tuple[int, ...]] | None = None
        for n in range(2, max_n + 1):
            for gram, c in _count_nonoverlapping(seq, n, banned).items():
                if c < min_count:
                    continue
                gain = (n - 1) * c
                if best is None or gain > best[0] or (gain == best[0] and gram < best[1]):
                    best = (gain, gram)
        if best is None:
            break
        vocab.merges.append(best[1])
        seq = _replace(seq, best[1], vocab.new_id(len(vocab.merges) - 1))
    return vocab


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
        return torch.cat([self.base(h), h @ self.extra.to(h.dtype).T], dim=-1)


def part_mean_rows(weight: torch.Tensor, vocab: PhraseVocab) -> torch.Tensor:
    """(M, H) rows: the mean of each merged token's base parts' rows of ``weight``."""
    rows = [weight[torch.tensor(vocab.parts(vocab.new_id(k)))].float().mean(0)
            for k in range(len(vocab.merges))]
    return torch.stack(rows).to(weight.dtype) if rows else weight[:0].clone()


# tokenizer → {calibration sha + settings: PhraseVocab}
_LEARNED: "weakref.WeakKeyDictionary[Any, dict[str, PhraseVocab]]" = weakref.WeakKeyDictionary()


class PhraseMerge(Method):
    name = "phrase-merge"
    label = "Phrase-merge tokenizer (untrained, experimental; new rows = mean of parts)"
    simplification = ("AdaptiVocab adapts the vocabulary to a domain and fine-tunes; here "
                      "merges are learned from a short generic text, new rows are the mean of "
                      "their parts (no exponential weighting), no fine-tuning (untrained)")
    model_changing = True

    def __init__(self, max_phrases: int = 64, min_count: int = 2, max_n: int = 4,
                 calibration: Optional[str] = None, **params: Any) -> None:
        reject_unknown(self.name, params, ["max_phrases", "min_count", "max_n", "calibration"])
        for nm, v, lo in (("max_phrases", max_phrases, 1), ("min_count", min_count, 2),
                          ("max_n", max_n, 2)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise InputError(f"{nm} must be an integer >= {lo} (got {v!r})")
        if calibration is not None and (not isinstance(calibration, str) or not calibration.strip()):
            raise InputError("calibration text must be a non-empty string")
        super().__init__(max_phrases=max_phrases, min_count=min_count, max_n=max_n)
        if calibration is not None:
            self.params["calibration_sha"] = hashlib.sha256(calibration.encode()).hexdigest()[:12]
        self._text = calibration
        self.vocab: Optional[PhraseVocab] = None
        self._saved: Optional[tuple[Any, Any]] = None
        self._model: Any = None

    # ---- vocabulary and model change --------------------------------------------------------
    def learn(self, lm: LoadedModel, cancel: Optional[CancelToken] = None) -> float:
        text = self._text if self._text is not None else calibration_text()
        key = hashlib.sha256(text.encode()).hexdigest() + repr(
            (self.params["max_phrases"], self.params["min_count"], self.params["max_n"]))
        per_tok = _LEARNED.setdefault(lm.tokenizer, {})
        base = lm.model.get_input_embeddings().weight.shape[0]
        got = per_tok.get(key)
        if got is not None and got.base_size == base:
            self.vocab = got
            return 0.0
        t0 = time.perf_counter()
        self.vocab = learn_phrases(lm.tokenizer, text, base, max_phrases=self.params["max_phrases"],
                                   min_count=self.params["min_count"], max_n=self.params["max_n"],
                                   cancel=cancel)
        per_tok[key] = self.vocab
        return time.perf_counter() - t0

    def prepare(self, lm: LoadedModel, *, progress: Optional[ProgressFn] = None,
                cancel: Optional[CancelToken] = None) -> float:
        if self._saved is not None and self._model is lm.model:
            return 0.0
        self.restore(lm)
        aux = self.learn(lm, cancel)
        t0 = time.perf_counter()
        model = lm.model
        emb = model.get_input_embeddings()
        head = model.get_output_embeddings()
        if not isinstance(emb, nn.Embedding) or head is None or not hasattr(head, "weight"):
            raise InputError(f"{getattr(lm, 'name', 'model')}: phrase merge needs a plain "
                             "embedding table and output head")
        tied = head.weight is emb.weight
        with torch.no_grad():
            extra_in = part_mean_rows(emb.weight, self.vocab)
            extra_out = extra_in if tied else part_mean_rows(head.weight, self.vocab)
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

    @contextlib.contextmanager
    def active(self, lm: LoadedModel) -> Iterator[None]:
        if self._saved is not None and self._model is lm.model:
            yield
            return
        self.prepare(lm)
        try:
            yield
        finally:
            self.restore(lm)

    # ---- encoding ---------------------------------------------------------------------------
    def encode(self, lm: LoadedModel, text: str) -> list[int]:
        if self.vocab is None:
            self.learn(lm)
        return self.vocab.encode_ids(encode_user_text(lm.tokenizer, text))

    def decode(self, lm: LoadedModel, ids: list[int]) -> str:
        return lm.tokenizer.decode(self.vocab.expand(ids), skip_special_tokens=True)

    def render_prompt(self, lm: LoadedModel, q: Query) -> list[int]:
        if self.vocab is None:
            self.learn(lm)
        return self.vocab.encode_ids(render_chat(lm.tokenizer, self.messages(q, q.document)))

    def new_state(self, lm: LoadedModel, q: Query, prompt_ids: list[int]) -> GenState:
        st = super().new_state(lm, q, prompt_ids)
        st.prompt_tokens_in = len(render_chat(lm.tokenizer, self.messages(q, q.document)))
        return st

    # ---- measured calls ---------------------------------------------------------------------
    def run(self, lm: LoadedModel, q: Query, max_new_tokens: int, *,
            cancel: Optional[CancelToken] = None, sampling: Any = None,
            fixed_length: bool = False) -> MethodOutput:
        with self.active(lm):
            out = super().run(lm, q, max_new_tokens, cancel=cancel, sampling=sampling,
                              fixed_length=fixed_length)
        out.text = self.decode(lm, out.token_ids)  # the base loop's decode skips merged ids
        new = sum(1 for t in out.token_ids if t >= self.vocab.base_size)
        out.extra.update(
            phrases=len(self.vocab.merges), new_tokens_generated=new,
            new_token_rate=new / len(out.token_ids) if out.token_ids else None,
            tokens_saved=out.cost["prompt_tokens_in"] - out.cost["prompt_tokens_effective"],
            output_base_tokens=len(self.vocab.expand(out.token_ids)))
        return out

    def base_token_ids(self, ids: list[int]) -> list[int]:
        return self.vocab.expand(ids) if self.vocab is not None else ids

    def teacher_forced_logprobs(self, lm: LoadedModel, q: Query, target_ids: list[int], *,
                                cancel: Optional[CancelToken] = None) -> torch.Tensor:
        """Targets are original-vocabulary ids (the baseline's continuation), fed one by one after
        the merged prompt. The softmax runs over the merged vocabulary and the original columns
        are returned: probability mass on the new tokens counts against the target."""
        with self.active(lm):
            lp = super().teacher_forced_logprobs(lm, q, target_ids, cancel=cancel)
        return lp[:, :self.vocab.base_size]

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
