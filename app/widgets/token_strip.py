"""Token strip: a tokenization drawn with its boundaries visible.

Each token is a cell on an alternating background colour, so every boundary is a colour change
(spaces stay visible as coloured blanks); below each row of tokens a row of their ids in the same
colours and column widths, so token i and id i line up (cells are one blank apart; the colour
shows each token's exact extent, leading spaces included). Tokens whose character span is not a span
of the reference tokenization (the canonical one) are underlined: that is where an adversarial
tokenization differs. Rows wrap at the widget's width; the height follows the content.
"""
from __future__ import annotations

from typing import Optional, Sequence

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
from textual.widget import Widget

from engine.inert import printable

PALETTE = (Style(color="#f0f0f0", bgcolor="#2f5d8a"), Style(color="#f0f0f0", bgcolor="#7a4b86"))
ID_PALETTE = (Style(color="#9cc3ea", bgcolor="#1c3550"), Style(color="#d7b3e0", bgcolor="#3f2747"))
CHANGED = Style(underline=True, bold=True)
VISIBLE = {"\n": "↵", "\r": "␍", "\t": "⇥"}


def display_token(tok: str) -> str:
    """The token as one line of text: newlines/tabs as symbols, other controls escaped
    (engine.inert's rules)."""
    return printable("".join(VISIBLE.get(ch, ch) for ch in tok)) or "∅"


def spans(tokens: Sequence[str]) -> list[tuple[int, int]]:
    """Character (start, end) of each token in the joined text."""
    out, pos = [], 0
    for t in tokens:
        out.append((pos, pos + len(t)))
        pos += len(t)
    return out


def changed_tokens(tokens: Sequence[str], reference: Optional[Sequence[str]]) -> list[bool]:
    """True where a token's span is not a token span of ``reference`` (False everywhere when no
    reference is given or the two do not spell the same text)."""
    if reference is None or "".join(tokens) != "".join(reference):
        return [False] * len(tokens)
    ref = set(spans(reference))
    return [s not in ref for s in spans(tokens)]


def strip_lines(tokens: Sequence[str], ids: Sequence[int], width: int, show_ids: bool = True,
                reference: Optional[Sequence[str]] = None) -> list[Text]:
    """The rendered rows (token row, then id row when ``show_ids``), wrapped at ``width`` cells."""
    width = max(4, width)
    changed = changed_tokens(tokens, reference)
    lines: list[Text] = []
    tok_line, id_line, used = Text(), Text(), 0

    def flush() -> None:
        nonlocal tok_line, id_line, used
        if used:
            lines.append(tok_line)
            if show_ids:
                lines.append(id_line)
        tok_line, id_line, used = Text(no_wrap=True), Text(no_wrap=True), 0

    for i, tok in enumerate(tokens):
        shown = display_token(tok)
        id_text = str(ids[i]) if i < len(ids) else "?"
        w = max(cell_len(shown), cell_len(id_text) if show_ids else 0)
        if w > width:  # a very long token: cut it to the row
            while cell_len(shown) > width - 1:
                shown = shown[:-1]
            shown += "…"
            w = width
        if used and used + 1 + w > width:
            flush()
        if used:  # an unstyled gap: the coloured cell shows the token's exact extent
            tok_line.append(" ")
            id_line.append(" ")
            used += 1
        style = PALETTE[i % 2] + (CHANGED if changed[i] else Style())
        tok_line.append(shown + " " * (w - cell_len(shown)), style)
        id_line.append(id_text.rjust(w) if show_ids else "", ID_PALETTE[i % 2])
        used += w
    flush()
    return lines or [Text("(no tokens)", style="dim")]


class TokenStrip(Widget):
    """A tokenization with boundaries (alternating colours) and ids under each token."""

    DEFAULT_CSS = "TokenStrip { height: auto; width: 1fr; }"

    def __init__(self, *, show_ids: bool = True, name: Optional[str] = None,
                 id: Optional[str] = None, classes: Optional[str] = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.tokens: list[str] = []
        self.ids: list[int] = []
        self.reference: Optional[list[str]] = None
        self.show_ids = show_ids

    def set_tokens(self, tokens: Sequence[str], ids: Sequence[int],
                   reference: Optional[Sequence[str]] = None) -> None:
        self.tokens, self.ids = list(tokens), [int(i) for i in ids]
        self.reference = list(reference) if reference is not None else None
        self.refresh(layout=True)

    def clear(self) -> None:
        self.set_tokens([], [])

    def plain(self) -> str:
        return "\n".join(t.plain for t in self.lines(self.size.width or 80))

    def lines(self, width: int) -> list[Text]:
        if not self.tokens:
            return [Text("–", style="dim")]
        return strip_lines(self.tokens, self.ids, width, self.show_ids, self.reference)

    def get_content_height(self, container, viewport, width: int) -> int:  # type: ignore[override]
        return len(self.lines(width))

    def render(self) -> Text:
        return Text("\n", no_wrap=True).join(self.lines(self.size.width))
