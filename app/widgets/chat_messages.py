"""The chat transcript's widgets: a user turn, an assistant turn (streamed Markdown, then one
final update) and the per-answer figures line. Both can be selected (tab or a click): the chat
screen then copies that message (alt+c) and shows that turn in the token explorer; on a user
message, e edits it (answered as a new variant of its turn)."""
from __future__ import annotations

from typing import Any, Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Markdown, Static

from engine.inert import printable


def answer_figures(r: Any, stopped: bool = False) -> str:
    """One line of per-answer figures."""
    s = (f"{r.new_tokens} tokens · TTFT {r.ttft_s:.2f} s · {r.decode_tok_s:.1f} tok/s · "
         f"prefill {r.prefill_tokens} · stop: {r.stop_reason}")
    if getattr(r, "dropped_turns", 0):
        s += f" · dropped {r.dropped_turns} old turn(s)"
    if stopped and r.stop_reason != "cancelled":
        s += " · stopped"
    return s


SELECTED_CSS = "&:focus { background: $boost; }"


class UserMessage(Static, can_focus=True):
    """A user turn: the message as text, never markup, with controls shown escaped (``raw`` is
    the message itself)."""

    DEFAULT_CSS = "UserMessage { " + SELECTED_CSS + " }"
    BINDINGS = [Binding("e", "edit", "Edit message", id="chat.edit_message",
                        tooltip="Edit this message: the answer to it is a new variant of the turn")]

    def __init__(self, text: str = "", **kwargs: Any) -> None:
        kwargs["markup"] = False
        super().__init__(printable(text, multiline=True), **kwargs)
        self.raw = text

    def action_edit(self) -> None:
        edit = getattr(self.screen, "edit_message", None)
        if edit is not None:
            edit(self)


class AssistantMessage(Vertical, can_focus=True):
    """An assistant turn: Markdown body (streamed, then final) and a figures line."""

    DEFAULT_CSS = "AssistantMessage { " + SELECTED_CSS + " }"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.text = ""
        self.stream: Any = None

    def compose(self) -> ComposeResult:
        yield Markdown("", classes="answer-body")
        yield Static("[dim]…thinking[/]", classes="answer-figures")

    @property
    def body(self) -> Markdown:
        return self.query_one(Markdown)

    @property
    def figures(self) -> Static:
        return self.query_one(".answer-figures", Static)

    async def append(self, text: str) -> None:
        self.text += text
        if self.stream is None:
            self.stream = Markdown.get_stream(self.body)
        await self.stream.write(printable(text, multiline=True))  # a model's output: inert

    async def finish(self, final_text: Optional[str], figures: str, error: bool = False) -> None:
        if self.stream is not None:
            await self.stream.stop()
            self.stream = None
        if final_text is not None:
            self.text = final_text
        await self.body.update(printable(self.text, multiline=True) or ("" if error else "_(no text)_"))
        self.figures.update(figures)
        self.set_class(error, "-error")
