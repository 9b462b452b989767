"""Incremental detokenization with stop strings that may span token boundaries.

Text is re-decoded from all ids each step (cheap next to a forward) so multi-byte characters
split across tokens never show as U+FFFD, and text that could be the start of a stop string is
held back until it is known not to be one, so a stop string never leaks into the stream."""
from __future__ import annotations

from typing import Any, Sequence


class TextStream:
    def __init__(self, tokenizer: Any, stop_strings: Sequence[str] = ()) -> None:
        self.tok = tokenizer
        self.stops = tuple(s for s in stop_strings if s)
        self.ids: list[int] = []
        self.text = ""
        self.emitted = 0
        self.stopped_at: int | None = None
        self.stop_string: str | None = None

    def push(self, token_id: int) -> tuple[str, bool]:
        """Add one token; return (new text safe to show, whether a stop string was hit)."""
        self.ids.append(int(token_id))
        self.text = self.tok.decode(self.ids, skip_special_tokens=True)
        if self.stops:
            start = max(0, self.emitted - max(len(s) for s in self.stops))
            best = None
            for s in self.stops:
                p = self.text.find(s, start)
                if p >= 0 and (best is None or p < best[0]):
                    best = (p, s)
            if best is not None:
                self.stopped_at, self.stop_string = best
                delta = self.text[self.emitted:best[0]]
                self.emitted = best[0]
                return delta, True
        safe = len(self.text)
        if self.text.endswith("\ufffd"):  # an incomplete multi-byte character
            safe -= 1
        safe -= self._holdback(self.text[:safe])
        if safe <= self.emitted:
            return "", False
        delta = self.text[self.emitted:safe]
        self.emitted = safe
        return delta, False

    def _holdback(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        n = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), n, -1):
                if text.endswith(s[:k]):
                    n = k
                    break
        return n

    def flush(self) -> str:
        """Everything not yet emitted (at the end of generation)."""
        end = self.stopped_at if self.stopped_at is not None else len(self.text)
        delta = self.text[self.emitted:end]
        self.emitted = max(self.emitted, end)
        return delta

    @property
    def final_text(self) -> str:
        return self.text[: self.stopped_at] if self.stopped_at is not None else self.text
