"""Stop criteria, the other half of the decode pipeline (engine/lm/sampling.py is the first):
EOS ids, stop strings, the new-token limit and cancel, for every row of one generation, built
once from a :class:`SamplingConfig`. A loop pushes each row's chosen token and is told whether
that row is done and why; the text of each row is kept incrementally (engine/lm/textstream.py),
so checking stop strings costs the same at every step."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from engine.lm.config import SamplingConfig
from engine.lm.textstream import TextStream
from engine.progress import CancelToken

#: why a row stopped (GenerationResult.stop_reason)
REASONS = ("eos", "stop_string", "max_new_tokens", "cancelled")


class StopCriteria:
    """Per-row stop state. ``push(row, token)`` returns (text delta, reason or None): an EOS
    token ends the row without joining its answer; a token completing a stop string joins the
    ids but the text ends before the string; the ``max_new_tokens``-th token ends it too.
    ``live`` rows decode as they go (stop strings, or a caller streaming the text); others
    decode once at the end."""

    def __init__(self, cfg: SamplingConfig, eos_ids: Sequence[int], tokenizer: Any, rows: int = 1,
                 *, cancel: Optional[CancelToken] = None, live: bool = False,
                 max_new_tokens: Optional[int] = None) -> None:
        self.eos = frozenset(int(e) for e in eos_ids)
        self.max_new = int(max_new_tokens if max_new_tokens is not None else cfg.max_new_tokens)
        self.cancel = cancel
        self.streams = [TextStream(tokenizer, cfg.stop_strings, live=live) for _ in range(rows)]
        self.reasons: list[Optional[str]] = [None] * rows

    def check_cancel(self) -> None:
        """Raise Cancelled when the generation's cancel token is set."""
        if self.cancel is not None:
            self.cancel.check()

    def push(self, row: int, token: int) -> tuple[str, Optional[str]]:
        if token in self.eos:
            self.reasons[row] = "eos"
            return "", "eos"
        s = self.streams[row]
        delta, hit = s.push(token)
        if hit:
            self.reasons[row] = "stop_string"
        elif len(s.ids) >= self.max_new:
            self.reasons[row] = "max_new_tokens"
        return delta, self.reasons[row]

    def push_rows(self, rows: Sequence[int], tokens: Sequence[int]) -> list[int]:
        """Push one token per active row; the positions (in ``rows``) of the rows still going."""
        still = []
        for j, (row, tok) in enumerate(zip(rows, tokens)):
            if self.push(row, tok)[1] is None:
                still.append(j)
        return still

    def cancelled(self, rows: Sequence[int]) -> None:
        """Rows still running when a cancel landed."""
        for r in rows:
            if self.reasons[r] is None:
                self.reasons[r] = "cancelled"

    def reason(self, row: int) -> str:
        return self.reasons[row] or "max_new_tokens"

    def token_ids(self, row: int) -> list[int]:
        return self.streams[row].ids

    def text(self, row: int) -> str:
        return self.streams[row].final_text

    def flush(self, row: int) -> str:
        return self.streams[row].flush()
