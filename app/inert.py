"""The output layer for text the program did not write (files, sessions, a model, argv), over
engine.inert's control-character rules: the Rich and Textual side.

- ``esc(x)``: for a value placed inside a Rich markup string (CLI): controls escaped, then
  ``rich.markup.escape``. Never for Textual markup, which reads more than Rich does (``[$var]``,
  ``[B]``): in the TUI data goes in ``text()`` / ``styled()`` objects instead.
- ``tesc(x)``: the same for a Textual markup string (its dialect differs from Rich's).
- ``text(x, style)``: a ``rich.text.Text`` of the value (no markup is read from it).
- ``styled(template, **values)``: the program's own markup with data filled in as plain text:
  ``styled("[dim]wrote {path}[/]", path=p)``. Placeholders are ``{name}`` (format spec allowed).
- ``plain(x)``: the value as inert plain text, for ``notify(..., markup=False)``, titles, cells.
- ``notice(widget, message, title=…)``: a Textual toast of data (inert, markup off).
- ``InertArgumentParser``: argparse whose usage, help and error lines are printed inert.
- ``console(stderr=False)``: a Console for the CLI that additionally escapes controls in every
  text segment it writes (a table cell, a status line or a traceback that was missed above still
  reaches the terminal inert), with emoji codes and highlighting off.
"""
from __future__ import annotations

import argparse
import re
import string
from typing import IO, Any, Iterable, Optional

from rich.console import Console
from rich.segment import Segment
from rich.text import Span, Text

from engine.inert import is_inert, printable

#: every "[" with the backslashes before it; group 2 is set when Rich's markup parser reads a
#: tag there (rich.markup.RE_TAGS without its backslash group)
_OPEN = re.compile(r"(\\*)\[(?=([a-z#/@][^[]*?])?)")


def _escape_open(m: re.Match) -> str:
    """Rich reads ``2k+1`` backslashes before a tag as ``k`` and an escaped tag, and drops one
    backslash before any other ``[`` (it replaces ``\\[`` with ``[`` in plain text)."""
    return (m.group(1) * 2 if m.group(2) is not None else m.group(1)) + "\\["


__all__ = ["esc", "tesc", "text", "styled", "plain", "notice", "console", "InertConsole",
           "InertArgumentParser", "is_inert", "printable"]


def plain(value: Any, *, multiline: bool = False) -> str:
    """The value as inert text (controls escaped); no markup is added or removed."""
    return printable(value, multiline=multiline)


def esc(value: Any, *, multiline: bool = False, tag_follows: bool = True) -> str:
    """The value for a Rich markup string: controls escaped, every ``[`` escaped (before a tag
    the backslashes in front are doubled; any other ``[`` gets one more), so the value reads
    back as itself and cannot open a tag with the template text after it. A run of backslashes
    at the end would escape the tag after the value, so it is doubled too (Rich reads ``2k``
    backslashes before a tag as ``k``); ``tag_follows=False`` when the value ends the string or
    plain text follows it."""
    s = _OPEN.sub(_escape_open, printable(value, multiline=multiline))
    if tag_follows:
        tail = len(s) - len(s.rstrip("\\"))
        s += "\\" * tail
    return s


def tesc(value: Any, *, multiline: bool = False) -> str:
    """The value for a Textual markup string (``Static.update(str)``, ``notify``, a border
    title): controls escaped, then every ``[`` escaped. Textual reads a tag at any ``[`` not
    preceded by a backslash (``[$accent]``, ``[B]`` and ``[ b]`` are tags there, unlike in Rich),
    and a backslash before a ``[`` always escapes it, so a trailing backslash in the value is
    followed by a zero-width space: it cannot escape the tag that closes the value."""
    s = printable(value, multiline=multiline).replace("[", "\\[")
    return s + "\u200b" if s.endswith("\\") else s


def text(value: Any, style: str = "", *, multiline: bool = False) -> Text:
    """A Text holding the value literally (no markup read), controls escaped."""
    return Text(printable(value, multiline=multiline), style=style, end="")


_FORMATTER = string.Formatter()


_SLOT = "\x00"  # stands for a field while the template's markup is read (never in a template)


def styled(template: str, /, **values: Any) -> Text:
    """The program's own markup ``template`` with ``{name}`` fields filled from ``values`` (after
    a format spec, e.g. ``{n:,}``, and a conversion, e.g. ``{p!r}``) as plain inert text.

    Only the template is read as markup: each field is a placeholder character while it is
    parsed, then replaced by its value with the style that reached the placeholder. A value
    therefore cannot open or close a tag, lose a backslash, or join the template text after it
    into a tag, which escaping each value for Rich's parser could not promise."""
    if _SLOT in template:
        raise ValueError("a styled() template cannot contain NUL")
    parts: list[str] = []
    fills: list[str] = []
    for literal, field, spec, conv in _FORMATTER.parse(template):
        parts.append(literal)
        if field is None:
            continue
        v = values[field]
        if conv:
            v = {"r": repr, "s": str, "a": ascii}[conv](v)
        fills.append(printable(format(v, spec) if spec else str(v)))
        parts.append(_SLOT)
    rendered = Text.from_markup("".join(parts), end="")
    slots = [i for i, ch in enumerate(rendered.plain) if ch == _SLOT]
    if len(slots) != len(fills):  # a field inside a tag ("[link={url}]"): not supported
        raise ValueError(f"styled(): a field of {template!r} is inside a markup tag")
    if not fills:
        return rendered
    grow = [len(f) - 1 for f in fills]  # how far each placeholder pushes what follows it

    def moved(pos: int) -> int:
        return pos + sum(g for s, g in zip(slots, grow) if s < pos)

    out = Text("", style=rendered.style, end="")
    plain, at = [], 0
    for s, f in zip(slots, fills):
        plain += [rendered.plain[at:s], f]
        at = s + 1
    out.append("".join(plain) + rendered.plain[at:])
    # the template's spans, stretched over the values inside them (one span per tag, as the
    # markup alone gives: the output is the same segments as before the values went in)
    out.spans[:] = [Span(moved(sp.start), moved(sp.end), sp.style) for sp in rendered.spans]
    return out


class InertConsole(Console):
    """A Console whose written text segments have their controls escaped (Rich's own control
    segments — cursor moves, the status spinner — pass as they are; newlines stay)."""

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:  # Rich's write path
        safe = (seg if seg.control or is_inert(seg.text, multiline=True)
                else Segment(printable(seg.text, multiline=True), seg.style, seg.control)
                for seg in buffer)
        return super()._render_buffer(safe)


class InertArgumentParser(argparse.ArgumentParser):
    """argparse that shows argv inert: its usage errors quote the arguments it did not expect
    as they were typed (``unrecognized arguments: ESC[2J``)."""

    def _print_message(self, message: str, file: Optional[IO[str]] = None) -> None:
        super()._print_message(printable(message, multiline=True) if message else message, file)


def notice(target: Any, message: Any, *, title: Any = "", **kw: Any) -> None:
    """A Textual toast whose message and title are data: plain inert text, never markup."""
    target.notify(printable(message, multiline=True), title=printable(title) if title else "",
                  markup=False, **kw)


def console(*, stderr: bool = False, **kw: Any) -> InertConsole:
    """The CLI's console (stdout, or stderr for notes and errors)."""
    kw.setdefault("highlight", False)
    kw.setdefault("emoji", False)
    return InertConsole(stderr=stderr, **kw)
