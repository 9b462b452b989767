"""Validators for every form field, shared by all screens: each parser returns the typed value or
raises ``InputError`` with one clear sentence. Screens show that sentence inline and disable their
run/send button, so nothing unvalidated reaches the engine.

A field that sets a config field is parsed by ``parse_field(text, Config, "name")`` against the
bound declared on that field (engine.bounds), the one the command line (app/argcheck.py) and the
engine's ``validate()`` read too. ``FieldCheck`` adapts a parser to Textual's
``Input(validators=[...])``.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Optional

from textual.validation import ValidationResult, Validator

from engine.bounds import MAX_TEXT_CHARS, Bound, bound_of
from engine.paths import expand_user
from engine.errors import InputError


def _num_text(text: str, name: str) -> str:
    t = (text or "").strip().replace("_", "")
    if not t:
        raise InputError(f"{name}: enter a number")
    return t


def parse_int(text: str, name: str, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    t = _num_text(text, name)
    if not re.fullmatch(r"[+-]?\d+", t):
        raise InputError(f"{name}: '{text.strip()[:20]}' is not a whole number")
    v = int(t)
    _range(v, name, lo, hi)
    return v


def parse_float(text: str, name: str, lo: Optional[float] = None, hi: Optional[float] = None,
                lo_open: bool = False) -> float:
    t = _num_text(text, name)
    try:
        v = float(t)
    except ValueError:
        raise InputError(f"{name}: '{text.strip()[:20]}' is not a number") from None
    if not math.isfinite(v):
        raise InputError(f"{name}: must be a finite number")
    if lo_open and lo is not None and v <= lo:
        raise InputError(f"{name}: must be greater than {lo:g} (got {v:g})")
    _range(v, name, None if lo_open else lo, hi)
    return v


def _range(v: float, name: str, lo: Optional[float], hi: Optional[float]) -> None:
    if lo is not None and v < lo:
        raise InputError(f"{name}: must be ≥ {lo:g} (got {v:g})")
    if hi is not None and v > hi:
        raise InputError(f"{name}: must be ≤ {hi:g} (got {v:g})")


def parse_optional_int(text: str, name: str, lo: Optional[int] = None,
                       hi: Optional[int] = None) -> Optional[int]:
    """Empty (or 'none'/'random') → None, else a whole number in range (seeds)."""
    if _is_none(text):
        return None
    return parse_int(text, name, lo, hi)


def _is_none(text: str) -> bool:
    return not (text or "").strip() or text.strip().lower() in ("none", "random", "-", "all", "off")


def parse_bound(text: str, b: Bound, name: str, *, hi: Optional[float] = None) -> Any:
    """The typed value of ``text`` within a declared bound (``hi``: a tighter upper limit known
    only now, e.g. the loaded model's context). Empty text is None where the bound allows it."""
    if b.optional and b.kind in ("int", "float") and _is_none(text):
        return None
    top = b.hi if hi is None else (hi if b.hi is None else min(b.hi, hi))
    if b.kind == "int":
        v: Any = parse_int(text, name, None if b.lo is None else int(b.lo),
                           None if top is None else int(top))
    elif b.kind == "float":
        v = parse_float(text, name, b.lo, top, lo_open=b.lo_open)
    elif b.kind == "choice":
        # a family (cuda:N) is matched by the declaration itself, in its words
        v = (text or "").strip().lower() if b.pattern else parse_choice(text, name, b.choices)
    elif b.kind == "list":
        v = parse_list(text, b, name)
    else:
        limit = min(b.max_chars or MAX_TEXT_CHARS, int(hi) if hi is not None else MAX_TEXT_CHARS)
        v = (require_text(text, name, limit) if b.non_empty or not b.optional
             else optional_text(text, name, limit))
    b.check(name, v)  # the declaration is the last word (the parsers above say it in form words)
    return v


def parse_list(text: str, b: Bound, name: str) -> tuple[Any, ...]:
    """Comma-separated items, each parsed within the list's item bound: whole numbers for ids;
    for text '\\n' means a newline and '\\t' a tab, spaces around commas and empty entries
    are dropped. The list's own bound (how many) is checked by the caller."""
    if not (text or "").strip():
        return ()
    parts = [p.strip(" ") for p in text.split(",")]
    item = b.item or Bound(kind="text")
    if item.kind == "text":
        return tuple(p.replace("\\n", "\n").replace("\\t", "\t") for p in parts if p)
    words = [p.strip() for p in parts if p.strip()]
    if b.max_items is not None and len(words) > b.max_items:  # before parsing a pasted million
        raise InputError(f"{name}: {len(words):,} given, at most {b.max_items:,}")
    return tuple(parse_bound(w, item, f"{name}: item {i + 1}") for i, w in enumerate(words))


def list_text(values: Any) -> str:
    """A list setting as ``parse_list`` reads it back (newlines and tabs escaped)."""
    return ",".join(str(x).replace("\n", "\\n").replace("\t", "\\t") for x in values)


def parse_field(text: str, cls: Any, field: str, name: Optional[str] = None, *,
                hi: Optional[float] = None) -> Any:
    """A form field that sets ``cls.field``: parsed and checked against that field's declared
    bound. ``name``: the word the form shows (default: the bound's label); ``hi``: a tighter
    upper limit known only now (for text: fewer characters)."""
    b = bound_of(cls, field)
    return parse_bound(text, b, name or b.name_for(field), hi=hi)


def parse_timeout(text: str, name: str) -> Optional[float]:
    """Seconds; empty, 0, 'none' or 'off' = no limit; else within the declared timeout bound."""
    from engine.sessions.profiles import TIMEOUT

    t = (text or "").strip().lower()
    if t in ("", "none", "off", "0", "inf"):
        return None
    return parse_bound(text, TIMEOUT, name)


def require_text(text: str, name: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """Non-empty after stripping; printable enough to encode; not absurdly long."""
    if text is None or not str(text).strip():
        raise InputError(f"{name}: empty — type something first")
    if len(text) > max_chars:
        raise InputError(f"{name}: {len(text):,} characters is too long (limit {max_chars:,})")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise InputError(f"{name}: contains broken unicode (lone surrogates)")
    return str(text)


def optional_text(text: str, name: str, max_chars: int = MAX_TEXT_CHARS) -> Optional[str]:
    if text is None or not str(text).strip():
        return None
    return require_text(text, name, max_chars)


def parse_choice(text: str, name: str, choices: tuple[str, ...]) -> str:
    t = (text or "").strip().lower()
    if t not in choices:
        raise InputError(f"{name}: one of {', '.join(choices)} (got '{text.strip()[:20]}')")
    return t


def parse_model_spec(text: str) -> str:
    t = require_text(text, "model", 4096).strip()
    if "\n" in t or "\x00" in t:
        raise InputError("model: one line — 'default', a directory, a .gguf file or a hub id")
    return t


def parse_dir(text: str, name: str) -> Path:
    t = require_text(text, name, 4096).strip()
    p = expand_user(t, name)
    if p.exists() and not p.is_dir():
        raise InputError(f"{name}: {p} exists and is not a directory")
    return p


# paths and argv text: the same checks for CLI options and TUI fields, run before any work
def check_utf8(text: str, name: str) -> str:
    """Command-line bytes that were not UTF-8 arrive as lone surrogates (surrogateescape):
    refuse them with the byte offset instead of letting the tokenizer raise."""
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raw = os.fsencode(text) if all(not 0xD800 <= ord(c) < 0xDC80 for c in text) else b""
        try:
            raw.decode("utf-8")
            where = ""
        except UnicodeDecodeError as e:
            where = f" (byte {e.start})"
        raise InputError(f"{name}: not valid UTF-8 text{where}")
    if "\x00" in text:
        raise InputError(f"{name}: contains a NUL character")
    return text


def _folder_of(p: Path) -> Path:
    return p.parent if str(p.parent) else Path(".")


def check_output_file(text: str, name: str, *, overwrite: bool = False,
                      append: bool = False) -> Path:
    """A file the program will write: not a directory, its folder exists (never created
    silently) and is writable, and an existing file is replaced only when the user asked
    (``overwrite``) — or extended, for append-only results files (``append``)."""
    t = check_utf8(require_text(text, name, 4096).strip(), name)
    p = expand_user(t, name)
    if p.is_dir():
        raise InputError(f"{name}: {p} is a directory, not a file", hint="give a file name inside it")
    folder = _folder_of(p)
    if not folder.exists():
        raise InputError(f"{name}: folder {folder} does not exist", hint="create it first")
    if not folder.is_dir():
        raise InputError(f"{name}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{name}: folder {folder} is not writable")
    if p.exists() or p.is_symlink():
        if not p.is_file():
            raise InputError(f"{name}: {p} exists and is not a regular file")
        if not os.access(p, os.W_OK):
            raise InputError(f"{name}: {p} is read-only")
        if not append and not overwrite:
            raise InputError(f"{name}: {p} already exists", hint="add --force to overwrite it")
    return p


def check_output_dir(text: str, name: str) -> Path:
    """A folder the program writes into: an existing writable folder, or a new one whose
    parent exists (one level is created, never a chain of missing parents)."""
    t = check_utf8(require_text(text, name, 4096).strip(), name)
    p = expand_user(t, name)
    if p.exists():
        if not p.is_dir():
            raise InputError(f"{name}: {p} exists and is not a folder")
        if not os.access(p, os.W_OK | os.X_OK):
            raise InputError(f"{name}: folder {p} is not writable")
        return p
    folder = _folder_of(p)
    if not folder.is_dir():
        raise InputError(f"{name}: folder {folder} does not exist", hint="create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{name}: folder {folder} is not writable")
    return p


def check_input_file(text: str, name: str, max_bytes: int) -> Path:
    """A file the program reads: exists, is a regular file, readable, not absurdly large."""
    t = check_utf8(require_text(text, name, 4096).strip(), name)
    p = expand_user(t, name)
    if not p.exists():
        raise InputError(f"{name}: {p} not found")
    if p.is_dir():
        raise InputError(f"{name}: {p} is a directory, not a file")
    if not p.is_file():
        raise InputError(f"{name}: {p} is not a regular file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{name}: {p} is not readable")
    size = p.stat().st_size
    if size > max_bytes:
        raise InputError(f"{name}: {p} is {size:,} bytes; the limit is {max_bytes:,}")
    return p


class FieldCheck(Validator):
    """Textual validator around a parser: the parser's InputError message is the failure text."""

    def __init__(self, parse: Callable[[str], Any]) -> None:
        super().__init__()
        self.parse = parse

    def validate(self, value: str) -> ValidationResult:
        try:
            self.parse(value)
        except InputError as e:
            return self.failure(str(e), value)
        return self.success()


def first_error(checks: dict[str, Callable[[], Any]]) -> tuple[dict[str, Any], Optional[str]]:
    """Run named parsers; return (values, first error message or None)."""
    values: dict[str, Any] = {}
    for key, fn in checks.items():
        try:
            values[key] = fn()
        except InputError as e:
            return values, str(e)
    return values, None
