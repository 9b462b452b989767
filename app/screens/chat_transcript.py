"""Keeping the chat transcript equal to the session: turns the engine dropped to fit the context
are marked (still shown and exported, no longer seen by the model); an exchange that did not
happen (refused, failed, or stopped before its first token) leaves the screen as the session is;
and :func:`render_path` draws the session's path of its variants tree — the one code path for a
reopened session and for moving between variants ([ / ] in the token explorer).
A mixin of ``ChatScreen`` (needs ``exchanges``, ``hidden``, ``answer``, ``op``, ``last_prompt``,
``turns``, ``can_regenerate``, ``engine_error``, ``session``)."""
from __future__ import annotations

from typing import Any

from app.widgets.composer import Composer

DROPPED_TITLE = "dropped from the model's context"


def variant_label(session: Any, turn: Any = None) -> str:
    """' · variant i/n' for a turn with other variants (the last turn by default), else ''."""
    from engine.lm.branching import turn_variants

    nodes = getattr(session, "nodes", None)
    path = getattr(session, "path", None)
    if not nodes or not path:
        return ""
    t = turn if turn is not None else path[-1]
    if t.id < 0:
        return ""
    v = turn_variants(nodes, t.id)
    return f" · variant {v.index(t.id) + 1}/{len(v)}" if len(v) > 1 else ""


def turn_figures(session: Any, t: Any) -> str:
    """The figures line of a turn drawn from the session (not just answered)."""
    from app.widgets.chat_messages import answer_figures

    r = t.result
    fig = answer_figures(r, stopped=t.state == "stopped") if r is not None else \
        f"{len(t.answer_ids)} tokens"
    if t.state == "stopped" and "stop" not in fig.split("·")[-1]:
        fig += " · stopped"
    return "[dim]" + fig + variant_label(session, t) + "[/]"


async def render_path(screen: Any) -> None:
    """Draw the session's path (dropped turns marked) as the whole transcript."""
    from textual.containers import VerticalScroll

    from app.widgets.chat_messages import AssistantMessage, UserMessage

    s = screen.session
    messages = screen.query_one("#messages", VerticalScroll)
    await messages.remove_children()
    pairs = []
    n_dropped = len(s.dropped)
    for i, t in enumerate(s.path):
        user = UserMessage(t.user, classes="user-message", markup=False)
        msg = AssistantMessage(classes="assistant-message")
        await messages.mount(user, msg)
        await msg.finish(t.answer, turn_figures(s, t))
        if i < n_dropped:
            for w in (user, msg):
                w.add_class("-dropped")
            user.border_title = DROPPED_TITLE
        pairs.append((user, msg))
    screen.exchanges = pairs[n_dropped:]
    screen.hidden = []
    screen.turns = len(s.turns)
    screen.can_regenerate = bool(s.turns)
    messages.scroll_end(animate=False)


class TranscriptSync:
    exchanges: list
    hidden: list
    answer: Any

    def mark_dropped(self, n: int) -> None:
        """The engine dropped the ``n`` oldest turns to fit the context: say so on them (they stay
        on screen and in the export, but the model no longer sees them)."""
        for user, answer in self.exchanges[:max(0, min(n, len(self.exchanges) - 1))]:
            for w in (user, answer):
                w.add_class("-dropped")
            user.border_title = DROPPED_TITLE
        self.exchanges = self.exchanges[-1:] if n >= len(self.exchanges) else self.exchanges[n:]

    async def _take_back(self, why: str) -> None:
        """The exchange did not happen (refused, failed, or stopped before its first token): the
        session is as it was, so the screen is too — the new exchange leaves the transcript, the
        ones it replaced come back, and a new message goes back into the box."""
        self.engine_error = why
        if self.exchanges and self.exchanges[-1][1] is self.answer:
            user, answer = self.exchanges.pop()
            await user.remove()
            await answer.remove()
        for w in (w for pair in self.hidden for w in pair):
            w.display = True
        self.exchanges = self.exchanges + self.hidden
        self.hidden = []
        # after a new message that did not happen, ctrl+r would answer the previous one again
        # under the message now back in the box: refused until the next answer
        self.can_regenerate = self.op != "send" and bool(self.exchanges)
        if self.op == "send":
            prompt = self.query_one("#prompt", Composer)  # type: ignore[attr-defined]
            if not prompt.value:
                prompt.value = self.last_prompt  # give the message back to fix and resend
