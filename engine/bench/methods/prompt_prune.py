"""Prompt pruning of the context document: a naive every-Nth-word baseline and
self-information pruning (Selective-Context-style) scored by the project's own model.

Both act on ``Query.document`` (a query without one is fed unchanged) and share one guard:
negations and numbers are never dropped (an unguarded version dropped "not": docs/bench-methods.md).
Self-information: one teacher-forced pass of the model over the document gives each token's
surprisal −log p(token | preceding document); a word's self-information is the sum over its
tokens; the lowest-information unprotected words are dropped until ``ratio`` of the words are
gone. The compressor's time (that pass + the pruning) is charged to the run as ``aux_s``.

Dropping every Nth word matches no paper: it is the labelled baseline the scored method must beat.
"""
from __future__ import annotations

import bisect
import math
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch

from engine.errors import InputError
from engine.progress import CancelToken, check
from .base import GenState, Method, Query, render_chat
from .params import reject_unknown

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

_WORD = re.compile(r"\S+")
_NEGATIONS = frozenset("""not no nor never none nobody nothing nowhere neither cannot without
    isn't aren't wasn't weren't don't doesn't didn't won't wouldn't can't couldn't shouldn't
    mustn't hasn't haven't hadn't ain't needn't mightn't shan't""".split())
_NUMBER_WORDS = frozenset("""zero one two three four five six seven eight nine ten eleven twelve
    thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty
    seventy eighty ninety hundred thousand million billion trillion half dozen first second third
    fourth fifth sixth seventh eighth ninth tenth once twice""".split())


@dataclass
class Word:
    start: int
    end: int
    text: str


def split_words(text: str) -> list[Word]:
    """Whitespace-separated words with their character spans."""
    return [Word(m.start(), m.end(), m.group()) for m in _WORD.finditer(text)]


def is_protected(word: str) -> bool:
    """Negations and numbers (digits anywhere, or number words) are never dropped."""
    if any(ch.isdigit() for ch in word):
        return True
    core = word.strip(".,;:!?\"'()[]{}«»“”‘’-–—").lower().replace("’", "'")
    return core in _NEGATIONS or core in _NUMBER_WORDS or core.endswith("n't")


def rebuild(text: str, words: list[Word], keep: list[bool]) -> str:
    """The text with dropped words removed. Between two kept words goes the whitespace run with
    the most line breaks among those they span, so paragraphs and lines survive pruning."""
    parts: list[str] = []
    last_end: Optional[int] = None
    for w, k in zip(words, keep):
        if not k:
            continue
        if last_end is not None:
            runs = re.findall(r"\s+", text[last_end:w.start]) or [" "]
            parts.append(max(runs, key=lambda r: r.count("\n")))
        parts.append(w.text)
        last_end = w.end
    return "".join(parts)


def prune_every_nth(text: str, n: int, protect: bool = True) -> tuple[str, dict]:
    """Drop words n, 2n, 3n, … (1-based), skipping protected ones when ``protect``."""
    words = split_words(text)
    keep = [not ((i + 1) % n == 0 and not (protect and is_protected(w.text)))
            for i, w in enumerate(words)]
    return rebuild(text, words, keep), _figures(words, keep)


def word_surprisal(lm: LoadedModel, fwd: Any, text: str, *, window: int = 1024,
                   cancel: Optional[CancelToken] = None) -> list[float]:
    """Self-information (nats) of every word of ``text``: the sum of −log p over its tokens,
    scored by the model left to right in windows (the first token of each window has no
    context: +inf, so it is kept)."""
    tok = lm.tokenizer
    words = split_words(text)
    if not words:
        return []
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    sur = [math.inf] * len(ids)
    window = max(2, min(window, lm.context_length))
    # the model's own vocabulary: ids a vocabulary method appends beside the pruner (phrase merge
    # in all-combined) are not the pruner's to score, so the document is pruned as it would be
    # without them (a no-op slice for every other method)
    vocab = int(getattr(lm.model.config, "vocab_size", 0) or 0) or None
    for s in range(0, len(ids), window):
        check(cancel)
        chunk = ids[s:s + window]
        if len(chunk) < 2:
            break
        with torch.inference_mode():
            logits = fwd.logits(torch.tensor([chunk], device=lm.torch_device), fwd.new_cache(), keep=0)[0]
        lp = torch.log_softmax(logits[:-1, :vocab].float(), -1)
        got = -lp.gather(1, torch.tensor(chunk[1:], device=lp.device).view(-1, 1)).view(-1)
        for j, v in enumerate(got.tolist()):
            sur[s + 1 + j] = v
    starts = [w.start for w in words]
    out = [0.0] * len(words)
    for (a, b), v in zip(offsets, sur):
        if b <= a:
            continue
        piece = text[a:b]
        if not piece.strip():  # a whitespace token goes with the word after it (dropped with it)
            wi = min(bisect.bisect_left(starts, b), len(words) - 1)
        else:
            pos = a + (len(piece) - len(piece.lstrip()))  # first non-space char of the token
            wi = max(bisect.bisect_right(starts, pos) - 1, 0)
        out[wi] += v
    return out


def prune_by_surprisal(text: str, surprisal: list[float], ratio: float,
                       protect: bool = True) -> tuple[str, dict]:
    """Drop the lowest-self-information unprotected words until ``ratio`` of all words are gone
    (fewer if too many are protected). Ties: the later word goes first (stable order)."""
    words = split_words(text)
    target = int(round(ratio * len(words)))
    cand = [i for i, w in enumerate(words) if not (protect and is_protected(w.text))]
    cand.sort(key=lambda i: (surprisal[i], -i))
    drop = set(cand[:target])
    keep = [i not in drop for i in range(len(words))]
    return rebuild(text, words, keep), _figures(words, keep)


def _figures(words: list[Word], keep: list[bool]) -> dict:
    prot = [is_protected(w.text) for w in words]
    names = [i for i, w in enumerate(words)
             if i > 0 and w.text[:1].isupper() and not words[i - 1].text.endswith((".", "!", "?"))]
    return {"words_in": len(words), "words_kept": sum(keep),
            "protected": sum(prot), "protected_kept": sum(k for k, p in zip(keep, prot) if p),
            "names": len(names), "names_kept": sum(keep[i] for i in names)}


class _Pruning(Method):
    """Shared: prune the document, charge the compressor time, report full vs fed tokens."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._last: dict = {}

    def prune(self, lm: LoadedModel, text: str) -> tuple[str, dict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def document_text(self, lm: LoadedModel, q: Query) -> Optional[str]:
        if not q.document:
            self._last = {"aux_s": 0.0}
            return q.document
        t0 = time.perf_counter()
        pruned, figs = self.prune(lm, q.document)
        figs["aux_s"] = time.perf_counter() - t0
        self._last = figs
        return pruned

    def new_state(self, lm: LoadedModel, q: Query, prompt_ids: list[int]) -> GenState:
        st = super().new_state(lm, q, prompt_ids)
        st.prompt_tokens_in = len(render_chat(lm.tokenizer, self.messages(q, q.document)))
        st.info.update(self._last)
        st.info["prompt_tokens_full"] = st.prompt_tokens_in
        return st


class PruneEveryNth(_Pruning):
    name = "prune-nth"
    label = "Prompt pruning: drop every Nth word (naive baseline, negations/numbers kept)"
    simplification = "a naive reference point, not a published method"

    def __init__(self, n: int = 4, protect: bool = True, **params: Any) -> None:
        reject_unknown(self.name, params, ["n", "protect"])
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise InputError(f"n must be an integer >= 2 (got {n!r})")
        super().__init__(n=n, protect=bool(protect))
        self.n, self.protect = n, bool(protect)

    def prune(self, lm: LoadedModel, text: str) -> tuple[str, dict]:
        return prune_every_nth(text, self.n, self.protect)


class PruneSelfInfo(_Pruning):
    name = "prune-selfinfo"
    label = "Prompt pruning: drop low self-information words (Selective-Context-style, own model)"
    simplification = ("Selective Context prunes phrases and sentences by the self-information of "
                      "a separate small model; here words, scored by the model under test")

    def __init__(self, ratio: float = 0.25, protect: bool = True, **params: Any) -> None:
        reject_unknown(self.name, params, ["ratio", "protect"])
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
            raise InputError(f"ratio must be a number in (0, 1) (got {ratio!r})")
        super().__init__(ratio=float(ratio), protect=bool(protect))
        self.ratio, self.protect = float(ratio), bool(protect)

    def prune(self, lm: LoadedModel, text: str) -> tuple[str, dict]:
        sur = word_surprisal(lm, self.forward(lm), text)
        return prune_by_surprisal(text, sur, self.ratio, self.protect)
