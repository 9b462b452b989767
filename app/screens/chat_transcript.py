"""Keeping the chat transcript equal to the session: turns the engine dropped to fit the context
are marked (still shown and exported, no longer seen by the model), and a turn that did not
happen (refused, failed, or stopped before its first token) leaves the screen as the session is.
A mixin of ``ChatScreen`` (needs ``exchanges``, ``answer``, ``regenerating``, ``replaced``,
``last_prompt``, ``turns``, ``can_regenerate``, ``engine_error``)."""
from __future__ import annotations

from typing import Any

from app.widgets.composer import Composer


class TranscriptSync:
    exchanges: list
    answer: Any

    def mark_dropped(self, n: int) -> None:
        """The engine dropped the ``n`` oldest turns to fit the context: say so on them (they stay
        on screen and in the export, but the model no longer sees them)."""
        for user, answer in self.exchanges[:max(0, min(n, len(self.exchanges) - 1))]:
            for w in (user, answer):
                w.add_class("-dropped")
            user.border_title = "dropped from the model's context"
        self.exchanges = self.exchanges[-1:] if n >= len(self.exchanges) else self.exchanges[n:]

    async def _take_back(self, why: str) -> None:
        """The turn did not happen (refused, failed, or stopped before its first token): the
        session is as it was, so the screen is too. A new message leaves the transcript and goes
        back into the box; a regenerate gets its old answer back."""
        self.engine_error = why
        if self.regenerating and self.replaced is not None and self.answer is not None:
            text, figures = self.replaced
            await self.answer.finish(text, figures)
            self.turns += 1
            self.can_regenerate = True
            self.replaced = None
            return
        if self.exchanges and self.exchanges[-1][1] is self.answer:
            user, answer = self.exchanges.pop()
            await user.remove()
            await answer.remove()
        prompt = self.query_one("#prompt", Composer)
        if not prompt.value:
            prompt.value = self.last_prompt  # give the message back to fix and resend
