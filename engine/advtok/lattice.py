"""An editable tokenization of an AdvTok request: the user splits or merges the token at a
cursor, or moves a boundary by one character, and the target's log-likelihood under the edited
tokenization is rescored at once through the run's cached scorer (the prefix is prefilled once,
so an edit feeds only the request's tokens and the target; no trunk: for one candidate, feeding
the old tokenization as a trunk first would cost more than it saves; scores are memoised). An
edited tokenization can seed a search (``AttackConfig(init="given", given_ids=...)``).

Every edit stays on the tokenization diagram (MDD): a token is only ever replaced by a path of
vocabulary tokens spelling exactly the same bytes."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

from engine.errors import InputError
from engine.advtok.mdd import MDD
from engine.advtok.record_lattice import char_spans
from engine.advtok.score import CandidateScorer
from engine.advtok.vocab import load_vocab

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


@dataclass
class LatticeEdit:
    """The outcome of one edit: the new tokenization, its score and what it cost."""

    ids: list[int]
    score: float
    cursor: int
    seconds: float
    what: str


class TokenLattice:
    """One request's tokenization diagram with a current (edited) path, scored for a response.
    Same objective and setup as ``run_attack`` (template, frozen parts, length norm)."""

    def __init__(self, lm: LoadedModel, request: str, response: str, system: Optional[str], *,
                 vocab: Any = None, length_norm: bool = True,
                 frozen_prefix_ids: Sequence[int] = (), frozen_suffix_ids: Sequence[int] = ()) -> None:
        from engine.lm.templates import split_template

        if not request or not request.strip():
            raise InputError("the request is empty")
        if not response or not response.strip():
            raise InputError("the target response is empty")
        tok = lm.tokenizer
        self.lm = lm
        self.chunks = ch = split_template(tok, system)
        self.text = ch.request_text(request)
        self.vocab = vocab if vocab is not None else load_vocab(tok)
        self.mdd = MDD(self.vocab, self.text)
        self.canonical = self.mdd.canonical(tok)
        targets = ch.tail_ids + ch.response_ids(response)
        self.prefix = ch.prefix_ids + list(frozen_prefix_ids)
        self.between = list(frozen_suffix_ids)
        self.targets = targets
        self.scorer = CandidateScorer(lm, self.prefix, self.between, targets,
                                      length_norm=length_norm)
        self.ids = list(self.canonical)
        self.cursor = 0
        self.score = self.scorer.score_one(self.ids)
        self.canonical_score = self.score

    # -- geometry -----------------------------------------------------------------------------
    def spans(self, ids: Optional[Sequence[int]] = None) -> list[tuple[int, int, int]]:
        """(start byte, end byte, id) of each token."""
        return self.mdd.spans(list(self.ids if ids is None else ids))

    def char_spans(self, ids: Optional[Sequence[int]] = None) -> list[tuple[int, int]]:
        """(start, end) character offsets of each token (a token that ends inside a multi-byte
        character is widened to whole characters)."""
        return char_spans(self.text, self.spans(ids))

    def path(self, a: int, b: int) -> Optional[list[int]]:
        """The fewest-token path of the diagram from byte a to byte b (None when none)."""
        best: dict[int, list[int]] = {a: []}
        for pos in range(a, b):
            if pos not in best:
                continue
            for j, t in self.mdd.out[pos]:
                if j <= b and (j not in best or len(best[pos]) + 1 < len(best[j])):
                    best[j] = best[pos] + [t]
        return best.get(b)

    def _cut_points(self, s: int, e: int) -> list[int]:
        """Byte offsets inside (s, e) where the span can be cut into two diagram paths."""
        return [m for m in range(s + 1, e) if self.path(s, m) is not None
                and self.path(m, e) is not None]

    # -- edits --------------------------------------------------------------------------------
    def _apply(self, ids: list[int], cursor: int, what: str) -> LatticeEdit:
        if not self.mdd.contains(ids):  # never expected: every edit is built from diagram edges
            raise InputError("the edit does not spell the request")
        t0 = time.perf_counter()
        score = self.scorer.score([ids])[0]
        self.ids, self.cursor, self.score = list(ids), cursor, score
        return LatticeEdit(list(ids), score, cursor, time.perf_counter() - t0, what)

    def _check(self, i: int) -> None:
        if not (0 <= i < len(self.ids)):
            raise InputError(f"no token at position {i} (the tokenization has {len(self.ids)})")

    def split(self, i: int, at: Optional[int] = None) -> LatticeEdit:
        """Split token i at byte ``at`` (absolute; default: a cut into two tokens when there is
        one, nearest the token's middle)."""
        self._check(i)
        s, e, _ = self.spans()[i]
        cuts = self._cut_points(s, e)
        if not cuts:
            raise InputError(f"token {i} cannot be split: no shorter tokens spell its bytes")
        if at is None:  # fewest tokens first (two when possible), then nearest the middle
            m = min(cuts, key=lambda c: (len(self.path(s, c) or []) + len(self.path(c, e) or []),
                                         abs(2 * c - s - e), c))
        elif at in cuts:
            m = at
        else:
            raise InputError(f"token {i} cannot be cut at byte {at}")
        mid = (self.path(s, m) or []) + (self.path(m, e) or [])
        return self._apply(self.ids[:i] + mid + self.ids[i + 1:], i, f"split token {i}")

    def merge(self, i: int) -> LatticeEdit:
        """Merge token i with the next one when one vocabulary token spells both."""
        self._check(i)
        if i + 1 >= len(self.ids):
            raise InputError("the last token has nothing after it to merge with")
        sp = self.spans()
        s, e = sp[i][0], sp[i + 1][1]
        one = [t for j, t in self.mdd.out[s] if j == e]
        if not one:
            raise InputError(f"no single token spells {self.text_of(s, e)!r}")
        return self._apply(self.ids[:i] + [one[0]] + self.ids[i + 2:], i, f"merged {i}+{i + 1}")

    def shift(self, i: int, delta: int) -> LatticeEdit:
        """Move the boundary after token i by ``delta`` characters (the two tokens around it
        are respelled with the fewest tokens)."""
        self._check(i)
        if i + 1 >= len(self.ids):
            raise InputError("the last token has no boundary after it")
        sp = self.spans()
        s, b, e = sp[i][0], sp[i][1], sp[i + 1][1]
        step = 1 if delta > 0 else -1
        nb = b
        for _ in range(abs(int(delta))):
            nb += step
            while s < nb < e and (self.mdd.data[nb] & 0xC0) == 0x80:  # whole characters
                nb += step
        if not (s < nb < e):
            raise InputError("the boundary cannot move past the next boundary")
        left, right = self.path(s, nb), self.path(nb, e)
        if left is None or right is None:
            raise InputError("no tokens spell the text on both sides of that boundary")
        ids = self.ids[:i] + left + right + self.ids[i + 2:]
        return self._apply(ids, i + len(left) - 1, f"moved boundary {i}|{i + 1}")

    def reset(self, ids: Optional[Sequence[int]] = None) -> LatticeEdit:
        """Back to the canonical tokenization (or to ``ids``, e.g. the search's best)."""
        return self._apply(list(self.canonical if ids is None else ids), 0, "reset")

    def text_of(self, s: int, e: int) -> str:
        return self.mdd.data[s:e].decode("utf-8", "replace")

    def tokens(self, ids: Optional[Sequence[int]] = None) -> list[str]:
        return [self.text_of(s, e) for s, e, _ in self.spans(ids)]
