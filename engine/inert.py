"""Text the program did not write (files, sessions, a model's output, argv) made inert for a
terminal: every character a terminal would act on is shown as an escape instead of being sent.

One implementation for every printing path (the CLI, the TUI, the token view's labels; why and
what it covers: docs/inert-output.md). The app's
Rich helpers (``app/inert.py``) escape markup on top of this; this module knows nothing of Rich.

The rules (the token view's, extended to every code point a terminal or a text layout acts on):

- ``\\n`` ``\\t`` ``\\r`` are shown as those two-character escapes (``multiline=True`` keeps
  ``\\n`` and ``\\t`` as they are, for transcripts and answers);
- any other C0 control, DEL and the C1 controls U+0080–U+009F (``ESC``, the 8-bit CSI/OSC
  introducers) as ``\\xNN``;
- a lone surrogate (it cannot be encoded for any terminal) as ``\\udXXX``;
- the bidirectional overrides and isolates (U+202A–U+202E, U+2066–U+2069), which reorder what
  follows them on screen, and the line and paragraph separators U+2028/U+2029 as ``\\uXXXX``.

Everything else — letters of every script, emoji, combining marks — passes through unchanged.
The output holds no character the rules escape, so a second pass changes nothing."""
from __future__ import annotations

import re
from typing import Any

#: every code point the rules escape (one character class, shared by both modes)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_MULTILINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029"
                               "\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape_one(m: re.Match[str]) -> str:
    ch = m.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    cp = ord(ch)
    return f"\\x{cp:02x}" if cp <= 0xFF else f"\\u{cp:04x}"


def printable(value: Any, *, multiline: bool = False) -> str:
    """``value`` as text safe to show in a terminal (the rules above). Non-strings go through
    ``str`` first, so a number or a path read from a file is handled the same way."""
    s = value if isinstance(value, str) else str(value)
    pattern = _UNSAFE_MULTILINE if multiline else _UNSAFE
    if pattern.search(s) is None:
        return s
    return pattern.sub(_escape_one, s)


#: what json.dumps(ensure_ascii=False) leaves raw that a terminal acts on (it escapes C0 itself)
_JSON_UNSAFE = re.compile("[\x7f-\x9f\ud800-\udfff\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def json_text(obj: Any, **kw: Any) -> str:
    """``json.dumps(obj, ensure_ascii=False, **kw)`` for a terminal: the characters the rules
    escape are written as JSON ``\\uXXXX`` escapes (they can only stand inside JSON strings, so
    the document parses to the same value), every other character as itself."""
    import json

    s = json.dumps(obj, ensure_ascii=False, **kw)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", s)


def is_inert(s: str, *, multiline: bool = False) -> bool:
    """True when ``s`` holds no character the rules escape (what a test asserts of output)."""
    return (_UNSAFE_MULTILINE if multiline else _UNSAFE).search(s) is None
