"""The merged vocabulary of phrase merge (engine/bench/methods/phrase_merge.py): learning the
merges from token sequences, applying them, and the way back: expanding merged ids into their
base parts to decode text, and folding a distribution over the merged vocabulary onto the
base vocabulary (the next base token each id commits to)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from engine.lm.templates import encode_user_text
from engine.progress import CancelToken, check

_SEP = -1  # between two examples of the domain material: never part of an n-gram


@dataclass
class PhraseVocab:
    """Merges in learned order: new id → the tuple of ids it replaces."""

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

    def expand(self, ids: Sequence[int]) -> list[int]:
        out: list[int] = []
        for t in ids:
            out.extend(self.parts(int(t)))
        return out

    def encode_ids(self, ids: Sequence[int]) -> list[int]:
        """Apply every merge in learned order (non-overlapping, left to right)."""
        seq = list(ids)
        for k, gram in enumerate(self.merges):
            seq = _replace(seq, gram, self.new_id(k))
        return seq

    def first_parts(self) -> list[int]:
        """The first base part of every new id (the next base token it commits to)."""
        return [self.parts(self.new_id(k))[0] for k in range(len(self.merges))]


class MergedDetokenizer:
    """The tokenizer as the decode path sees it: ids of the merged vocabulary are expanded into
    their base parts before decoding, so streaming, stop strings and the answer text work on
    merged ids. Everything else is the tokenizer's own."""

    def __init__(self, tokenizer: Any, vocab: PhraseVocab) -> None:
        self.tokenizer = tokenizer
        self.vocab = vocab

    def decode(self, ids: Any, **kw: Any) -> str:
        if torch.is_tensor(ids):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        return self.tokenizer.decode(self.vocab.expand(ids), **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


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


def _banned_and_numeric(tokenizer: Any, seq: Sequence[int]) -> tuple[set[int], set[int], set[int]]:
    """Ids no n-gram may contain (special tokens, line breaks, the example separator), ids that
    decode to digits and ids that decode to blanks: an n-gram of digits and blanks only is a
    number, not a phrase (AdaptiVocab leaves those out too)."""
    banned = {int(t) for t in (getattr(tokenizer, "all_special_ids", None) or [])}
    banned.add(_SEP)
    digits: set[int] = set()
    blanks: set[int] = set()
    for t in set(seq):
        if t == _SEP:
            continue
        s = tokenizer.decode([t])
        if "\n" in s or "\r" in s:
            banned.add(t)
        elif not s.strip():
            blanks.add(t)
        elif s.strip().isdigit():
            digits.add(t)
    return banned, digits, blanks


def learn_merges(tokenizer: Any, seqs: Sequence[Sequence[int]], base_size: int, *,
                 max_phrases: int = 64, min_count: int = 2, max_n: int = 4,
                 cancel: Optional[CancelToken] = None) -> PhraseVocab:
    """Greedy merges on token sequences (see the module docstring): each step the n-gram with the
    largest count × (n − 1), ties broken by the smaller tuple; then its occurrences are replaced."""
    seq: list[int] = []
    for s in seqs:
        if seq:
            seq.append(_SEP)
        seq.extend(int(t) for t in s)
    banned, digits, blanks = _banned_and_numeric(tokenizer, seq)
    numeric = digits | blanks
    vocab = PhraseVocab(base_size=base_size)
    for _ in range(max_phrases):
        check(cancel)
        best: tuple[int, tuple[int, ...]] | None = None
        for n in range(2, max_n + 1):
            for gram, c in _count_nonoverlapping(seq, n, banned).items():
                if c < min_count or (all(t in numeric for t in gram)
                                     and any(t in digits for t in gram)):
                    continue
                gain = (n - 1) * c
                if best is None or gain > best[0] or (gain == best[0] and gram < best[1]):
                    best = (gain, gram)
        if best is None:
            break
        vocab.merges.append(best[1])
        seq = _replace(seq, best[1], vocab.new_id(len(vocab.merges) - 1))
    return vocab


def learn_phrases(tokenizer: Any, text: str, base_size: int, **kw: Any) -> PhraseVocab:
    """Merges learned from one plain text (its user-text encoding)."""
    return learn_merges(tokenizer, [encode_user_text(tokenizer, text)], base_size, **kw)


def fold_to_base(lp: torch.Tensor, vocab: PhraseVocab) -> torch.Tensor:
    """(T, V + M) log-probs → (T, V): each new id's probability added to its first base part."""
    V = vocab.base_size
    if lp.shape[1] <= V:  # no merges: the rows as they are (bit for bit)
        return lp
    p = lp.double().exp()
    out = p[:, :V].clone()
    first = torch.tensor(vocab.first_parts(), dtype=torch.long, device=lp.device)
    out.index_add_(1, first, p[:, V:V + len(first)])
    return out.log().to(lp.dtype)


def comparable_logprobs(vocab: PhraseVocab, ref_ids: Sequence[int],
                        teacher_forced: Any) -> tuple[torch.Tensor, list[int]]:
    """The fidelity rows of a method that reads ``vocab``'s merged ids, and where they belong.

    ``ref_ids`` (the baseline's continuation, base ids) is tokenized the method's way (merged)
    and fed by ``teacher_forced(merged_ids) -> (T, V + M) log-probs``. Only positions where a
    merged token starts are comparable with the baseline: there the method's distribution,
    folded onto the base vocabulary (a new id's probability added to its first part: the next
    base token it commits to), is its distribution of the same next base token. Inside a merged
    token the method makes no choice, so those positions are not compared. Returns the folded
    (R, V) rows and, per row, its position in ``ref_ids``."""
    merged = vocab.encode_ids(ref_ids)
    lp = teacher_forced(merged)
    positions, at = [], 0
    for t in merged:
        positions.append(at)
        at += len(vocab.parts(t))
    return fold_to_base(lp, vocab), positions


def nll_per_base_token(vocab: PhraseVocab, base_ids: Sequence[int],
                       teacher_forced: Any) -> Optional[float]:
    """A text's NLL as a method that reads ``vocab``'s merged ids scores it: the total over its
    merged tokenization divided by its base-token count, i.e. nats per base token of the same
    text (the baseline's figure is per base token too). None for an empty text."""
    if not base_ids:
        return None
    ids = vocab.encode_ids(base_ids)
    lp = teacher_forced(ids)
    idx = torch.tensor(ids, dtype=torch.long).view(-1, 1)
    return float(-(lp.gather(1, idx).sum() / len(base_ids)))  # the baseline's mean, in fp32
