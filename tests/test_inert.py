"""The output layer (engine/inert.py, app/inert.py): what a terminal would act on is shown escaped,
markup in data is text, and the one implementation is the token view's."""
from __future__ import annotations

import io

import pytest
from hypothesis import given, strategies as st
from rich.table import Table
from rich.text import Text

from app.inert import console, esc, plain, styled, text
from engine.inert import is_inert, printable

HOSTILE = ("\x1b]52;c;SGVsbG8=\x07", "\x1b[2J", "\x9b2J", "\x9d52;c;AA\x9c", "[/]", "[/x]",
           "[bold]x", "a\\", "\u202eevil", "line\u2028two", "\ud800", "\x00", "\x7f", "\r")


def test_rules():
    assert printable("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert printable("a\nb\tc\rd", multiline=True) == "a\nb\tc\\rd"
    assert printable("\x1b[2J") == "\\x1b[2J"
    assert printable("\x9b") == "\\x9b"
    assert printable("\x7f") == "\\x7f"
    assert printable("\ud83d") == "\\ud83d"
    assert printable("\u202e\u2066\u2028") == "\\u202e\\u2066\\u2028"
    assert printable("naïve café 日本 🙂 ẹ́") == "naïve café 日本 🙂 ẹ́"
    assert printable(12) == "12"


def test_token_view_uses_the_same_rules():
    from engine.advtok import tokenview

    class V:
        token_bytes = ["\x1b[2J\n".encode(), b"\xe4"]

    assert tokenview.token_label(V(), 0) == printable("\x1b[2J\n") == "\\x1b[2J\\n"
    assert tokenview.token_label(V(), 1) == "\\xe4"


@given(st.text())
def test_output_is_inert_and_stable(s):
    out = printable(s)
    assert is_inert(out)
    assert printable(out) == out
    out_ml = printable(s, multiline=True)
    assert is_inert(out_ml, multiline=True) and printable(out_ml, multiline=True) == out_ml


@given(st.text())
def test_markup_escape_round_trips(s):
    """Whatever the data, Rich reads back exactly its inert text: no tag opened or closed."""
    assert Text.from_markup(esc(s, tag_follows=False)).plain == printable(s)
    assert Text.from_markup(f"{esc(s, tag_follows=False)} x").plain == printable(s) + " x"
    assert Text.from_markup(f"[dim]{esc(s)}[/]").plain == printable(s)
    assert Text.from_markup(f"[dim]{esc(s)}[/]{esc(s)}[b]{esc(s)}[/b]").plain == printable(s) * 3
    assert text(s).plain == printable(s)


@given(st.text(), st.integers())
def test_styled_fills_fields_as_text(s, n):
    t = styled("[bold]x[/] {a} [dim]{b!r}[/] {n:,}", a=s, b=s, n=n)
    assert t.plain == f"x {printable(s)} {printable(repr(s))} {n:,}"


@pytest.mark.parametrize("value", ["\\[", "\\\\[", "[", "\\[b", "a\\", "[bold]", "\\[bold]"])
@pytest.mark.parametrize("template, shown", [("{v}", "{}"), ("{v}b]", "{}b]"), ("{v} [b]x[/b]", "{} x"),
                                             ("[i]{v}[/i]", "{}")])
def test_styled_values_are_never_read_as_markup(value, template, shown):
    """Found by random draws: Rich drops one backslash before any "[" in plain text, so an
    escaped value lost it ("\\[" showed as "["), and a value ending in "[" could join the template
    text after it into a tag. A value is never parsed now, and keeps the style around it."""
    t = styled(template, v=value)
    assert t.plain == shown.replace("{}", value)
    if template.startswith("[i]"):
        assert [(sp.start, sp.end, str(sp.style)) for sp in t.spans] == [(0, len(value), "italic")]


def test_a_field_inside_a_tag_is_refused():
    with pytest.raises(ValueError, match="inside a markup tag"):
        styled("[link={u}]x[/]", u="https://example.org")


def _rendered(obj, **kw) -> str:
    buf = io.StringIO()
    c = console(file=buf, force_terminal=True, width=200, color_system="truecolor")
    c.print(obj, **kw)
    return buf.getvalue()


def test_console_escapes_what_was_missed():
    """A table cell or a markup=False line that still holds a control reaches the terminal inert;
    Rich's own styling codes still pass."""
    t = Table()
    t.add_column("c", style="bold")
    for h in HOSTILE:
        if "[" not in h:
            t.add_row(h)
    out = _rendered(t)
    for h in HOSTILE:
        if not is_inert(h):
            assert h not in out
    assert "\\x1b]52;c;" in out and "\x1b[1m" in out
    line = _rendered("x\x1b[2Jy\x9bz", markup=False)
    assert "\x1b[2J" not in line and "\\x1b[2J" in line and "\\x9b" in line


def test_plain_for_notifications():
    assert plain("[/]\x1b[2J") == "[/]\\x1b[2J"


@given(st.text())
def test_textual_markup_escape_round_trips(s):
    """Textual's dialect: the value inside the program's tags is shown as its inert text."""
    from textual.content import Content

    from app.inert import tesc

    shown = Content.from_markup(f"[b]{tesc(s)}[/b] [dim]{tesc(s)}[/]").plain
    want = printable(s)
    assert shown.replace("\u200b", "") == f"{want} {want}".replace("\u200b", "")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=15)


@given(_json_values)
def test_json_for_a_terminal_parses_to_the_same_value(v):
    """--json on stdout: the same document, with nothing a terminal acts on left raw."""
    import json

    from engine.inert import json_text

    s = json_text(v, indent=2)
    assert is_inert(s, multiline=True)
    assert json.loads(s) == v
