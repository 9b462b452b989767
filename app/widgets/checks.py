"""Check boxes whose glyph says their state: ``✓`` when checked, a blank when not.

Textual draws the same ``X`` for both states and tells them apart only by colour, which a
monochrome terminal, a colour-blind user or a screen capture loses. ``Check`` (a Checkbox) and
``CheckList`` (a SelectionList) draw the state itself; everything else (messages, CSS type
selectors, queries by the parent class) is Textual's own.
"""
from __future__ import annotations

from rich.segment import Segment
from textual.content import Content
from textual.strip import Strip
from textual.widgets import Checkbox, SelectionList
from textual.widgets._selection_list import SelectionType
from textual.widgets._toggle_button import ToggleButton

ON, OFF = "✓", " "


def glyph(checked: bool) -> str:
    return ON if checked else OFF


class Check(Checkbox):
    """A Checkbox drawing ✓ or a blank inside its button."""

    @property
    def _button(self) -> Content:
        button = super()._button
        return _swap(button, len(self.BUTTON_LEFT), len(self.BUTTON_INNER), glyph(self.value))


def _swap(content: Content, start: int, length: int, text: str) -> Content:
    """``content`` with the cells [start, start + length) replaced by ``text`` in their style."""
    head, mid, tail = content[:start], content[start:start + length], content[start + length:]
    spans = mid.spans
    new_mid = Content(text, spans=[s._replace(start=0, end=len(text)) for s in spans]) if spans \
        else Content(text)
    return Content.assemble(head, new_mid, tail)


class CheckList(SelectionList[SelectionType]):
    """A SelectionList drawing ✓ or a blank in each option's button."""

    def render_line(self, y: int) -> Strip:
        strip = super().render_line(y)
        segs = list(strip)
        if len(segs) < 2 or segs[1].text != ToggleButton.BUTTON_INNER:
            return strip  # not an option line (past the end)
        _, scroll_y = self.scroll_offset
        try:
            option = self.get_option_at_index(scroll_y + y)
        except Exception:  # noqa: BLE001 - OptionDoesNotExist: leave the line as drawn
            return strip
        segs[1] = Segment(glyph(option.value in self._selected), segs[1].style)
        return Strip(segs, strip.cell_length)
