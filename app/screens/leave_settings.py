"""The one question asked when leaving Settings with unapplied edits: apply, discard or stay.

A small modal (keys a / d / s, Esc = stay) so an edit is never dropped, nor applied, silently."""
from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Static

CHOICES = ("apply", "discard", "stay")


class LeaveSettings(ModalScreen[str]):
    """Dismissed with "apply", "discard" or "stay"."""

    DEFAULT_CSS = """
    LeaveSettings { align: center middle; }
    LeaveSettings > Vertical { width: auto; max-width: 90%; height: auto; padding: 1 2;
                               border: thick $warning; background: $surface; }
    LeaveSettings Horizontal { width: auto; height: auto; }
    LeaveSettings Button { margin: 1 1 0 0; }
    """
    BINDINGS = [Binding("a", "choose('apply')", "Apply"),
                Binding("d", "choose('discard')", "Discard"),
                Binding("s,escape", "choose('stay')", "Stay")]

    def __init__(self, n_edits: int) -> None:
        super().__init__(id="leave-settings")
        self.n_edits = n_edits

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"[b]{self.n_edits} unapplied settings edit(s)[/] — apply them before "
                         "leaving?", id="leave-question")
            with Horizontal():
                yield Button("Apply (a)", id="leave-apply", variant="primary")
                yield Button("Discard (d)", id="leave-discard", variant="error")
                yield Button("Stay (s/Esc)", id="leave-stay")

    def on_mount(self) -> None:
        self.query_one("#leave-apply", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss((event.button.id or "leave-stay").removeprefix("leave-"))

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice if choice in CHOICES else "stay")
