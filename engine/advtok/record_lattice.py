"""A dataset row's tokenization lattice, rebuilt from its results record with the loaded
tokenizer: the request text the record tokenized, its diagram (MDD) under the loaded
vocabulary, and the recorded canonical and adversarial token ids as paths of that diagram.

A record's ids mean something only under the tokenizer that made them. Before anything is drawn
the record is checked against the loaded model: the tokenizer's vocabulary hash (rows written
since it is recorded), else the weights hash (older rows: the same weights imply the same
tokenizer, other weights prove nothing, so nothing is drawn); the chat template must frame the
request exactly as recorded; and both id lists must spell that text under the loaded vocabulary.
Any failure is one plain sentence (:class:`RecordLatticeError`) instead of a lattice drawn with
the wrong tokens. Other weights with the same tokenizer draw the right lattice and say so."""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

from engine.errors import InputError
from engine.advtok.mdd import MDD

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


class RecordLatticeError(InputError):
    """The record cannot be drawn with the loaded tokenizer (the message says why)."""


def char_spans(text: str, byte_spans: Sequence[tuple[int, int, Any]]) -> list[tuple[int, int]]:
    """(start, end) character offsets of tokens given as (start byte, end byte, …) spans of the
    UTF-8 of ``text``; a token that ends inside a multi-byte character is widened to whole
    characters (byte-level tokenizers split characters)."""
    starts = [0]
    for ch in text:
        starts.append(starts[-1] + len(ch.encode("utf-8")))

    def ci(b: int, up: bool) -> int:
        k = bisect.bisect_left(starts, b)
        if k < len(starts) and starts[k] == b:
            return k
        return k if up else k - 1
    return [(ci(s, False), ci(e, True)) for s, e, *_ in byte_spans]


@dataclass
class RecordPaths:
    """The text, diagram and both recorded tokenizations of one row (read-only)."""

    row: str
    text: str
    mdd: MDD
    canonical: list[int]
    adversarial: list[int]
    notes: list[str] = field(default_factory=list)

    def char_spans(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        return char_spans(self.text, self.mdd.spans(list(ids)))

    def tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.mdd.data[s:e].decode("utf-8", "replace") for s, e, _ in self.mdd.spans(list(ids))]


def _short(h: Any) -> str:
    return str(h)[:12] + "…" if h else "not recorded"


def record_paths(lm: LoadedModel, rec: dict[str, Any], *, vocab: Any = None,
                 weights: Optional[str] = None) -> RecordPaths:
    """Rebuild ``rec``'s lattice with ``lm``'s tokenizer (``vocab``: the loaded vocabulary when
    at hand; ``weights``: the loaded weights hash when known, else computed, cached on the
    model). RecordLatticeError when the record was made with another tokenizer or template, or
    its ids do not spell its request here."""
    from engine.advtok.vocab import load_vocab
    from engine.lm.templates import split_template

    row = str(rec.get("id", "?"))
    can, adv = rec.get("canonical_ids"), rec.get("best_ids")
    if not isinstance(rec.get("request"), str) or not can or not adv:
        raise RecordLatticeError(f"row {row} has no request and token ids to draw")
    tok = lm.tokenizer
    vocab = vocab if vocab is not None else load_vocab(tok)
    model = rec.get("model") if isinstance(rec.get("model"), dict) else {}
    run_name = str(model.get("name") or model.get("spec") or "another model")
    here_name = str(getattr(lm, "name", "") or "the loaded model")
    recorded_vocab = (rec.get("tokenizer") or {}).get("vocab_hash") if isinstance(
        rec.get("tokenizer"), dict) else None
    if weights is None:
        from engine.sessions.snapshot import weights_hash_for

        weights = weights_hash_for(lm)
    same_weights = bool(model.get("weights_hash")) and model.get("weights_hash") == weights
    notes = []
    if recorded_vocab:
        if recorded_vocab != vocab.hash:
            raise RecordLatticeError(
                f"row {row} was tokenized by another tokenizer ({run_name}, vocabulary "
                f"{_short(recorded_vocab)}); the loaded {here_name} has vocabulary "
                f"{_short(vocab.hash)}: load that model to see this row's lattice")
        if not same_weights:
            notes.append(f"run with other weights ({run_name}, {_short(model.get('weights_hash'))});"
                         f" same tokenizer, so the tokenizations are drawn as recorded")
    elif not same_weights:
        raise RecordLatticeError(
            f"row {row} was run on {run_name} (weights {_short(model.get('weights_hash'))}), not "
            f"the loaded {here_name} (weights {_short(weights)}), and its record does not name "
            f"its tokenizer: load that model to see this row's lattice")
    system = rec.get("system", (rec.get("config") or {}).get("system"))
    text = split_template(tok, system).request_text(rec["request"])
    if isinstance(rec.get("request_text"), str) and rec["request_text"] != text:
        raise RecordLatticeError(
            f"row {row}: the loaded tokenizer's chat template frames the request differently "
            f"from the run's, so its token ids cannot be placed on it")
    mdd = MDD(vocab, text)
    for side, ids in (("canonical", can), ("adversarial", adv)):
        if not mdd.contains(list(ids)):
            raise RecordLatticeError(f"row {row}: the recorded {side} token ids do not spell its "
                                     f"request under the loaded tokenizer")
    return RecordPaths(row, text, mdd, [int(t) for t in can], [int(t) for t in adv], notes)
