"""The chat message box: a TextArea where Enter sends and ctrl+j / alt+enter / shift+enter (where
the terminal tells it apart) insert a newline. It drops TextArea's bindings on the app's screen
keys (F1–F6) so they keep working while it has focus."""
from __future__ import annotations

from typing import Any

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import TextArea


#: the app's screen keys; TextArea binds f6 to select_line and f7 to select_all, which would swallow them
#: while the composer has focus
APP_KEYS = frozenset({"f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8"})


def _composer_bindings() -> list:
    """TextArea's bindings minus those on the app's screen keys."""
    return [b for b in TextArea.BINDINGS
            if not (isinstance(b, Binding) and set(b.key.split(",")) & APP_KEYS)]


class Composer(TextArea, inherit_bindings=False):
    """Multi-line message box. TextArea inserts a newline on Enter in its own ``_on_key``; this
    subclass's ``_on_key`` runs first (Textual dispatches along the MRO and stops at
    ``prevent_default``), so Enter posts ``Submitted`` instead and the newline keys insert "\n".
    Terminals send ctrl+j as a distinct byte (LF); shift+enter and alt+enter only arrive as
    their own keys where the terminal reports them (kitty keyboard protocol), else as enter."""

    NEWLINE_KEYS = frozenset({"ctrl+j", "shift+enter", "alt+enter", "ctrl+enter"})
    BINDINGS = _composer_bindings()

    class Submitted(Message):
        """Enter was pressed in the composer."""

        def __init__(self, composer: "Composer") -> None:
            super().__init__()
            self.composer = composer

        @property
        def control(self) -> "Composer":
            return self.composer

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("soft_wrap", True)
        kwargs.setdefault("tab_behavior", "focus")
        kwargs.setdefault("show_line_numbers", False)
        super().__init__(**kwargs)

    @property
    def value(self) -> str:
        return self.text

    @value.setter
    def value(self, text: str) -> None:
        self.load_text(text)
        self.move_cursor(self.document.end)

    async def _on_key(self, event: events.Key) -> None:
        if self.read_only:
            return
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self))
        elif event.key in self.NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            start, end = self.selection
            self.replace("\n", start, end, maintain_selection_offset=False)
