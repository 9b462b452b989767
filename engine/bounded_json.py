"""JSON and JSONL read with bounded size and nesting depth. Every file the program reads (suites,
runs, datasets, results, configs, caches) goes through here, so a hostile or damaged file is named
with its line and the reason — never a RecursionError or a MemoryError traceback.

Python's json module recurses once per nesting level; a line of 100,000 ``[`` exhausts the stack.
The depth is checked first by a scan over the brackets outside strings (only when the text has
enough brackets to matter, so ordinary lines cost one ``count``)."""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any, Iterator, Optional

from engine.errors import InputError

#: deeper than any file this program writes (records nest ≤ 5 levels)
MAX_DEPTH = 64
#: one JSONL line (a suite's long document is ~100 KB)
MAX_LINE_BYTES = 64 << 20
#: a whole file read into memory
MAX_FILE_BYTES = 1 << 30

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")


class BadJSON(InputError):
    """A file (or line) that is not the JSON it should be; the message names where and why."""


def depth_of(text: str, limit: int = MAX_DEPTH) -> int:
    """Deepest bracket nesting of JSON text (strings skipped). Text with at most ``limit``
    opening brackets cannot nest deeper than ``limit``: 0 is returned without a scan, so pass
    the limit you compare against."""
    if text.count("[") + text.count("{") <= limit:
        return 0  # cannot exceed the limit: skip the scan
    d = best = 0
    for m in _BRACKET.finditer(_STRING.sub('""', text)):
        if m.group() in "[{":
            d += 1
            if d > best:
                best = d
        else:
            d -= 1
    return best


def loads(text: str | bytes, where: str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse one JSON document; BadJSON('<where>: <reason>') when it is not valid or too deep."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadJSON(f"{where}: not UTF-8 text (byte {e.start})") from None
    d = depth_of(text, max_depth)
    if d > max_depth:
        raise BadJSON(f"{where}: nested {d} levels deep; the limit is {max_depth}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise BadJSON(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except ValueError as e:  # an integer longer than Python's int-string limit
        raise BadJSON(f"{where}: {_int_limit_reason(e)}") from None
    except RecursionError:  # pragma: no cover - the depth scan runs first
        raise BadJSON(f"{where}: nested too deeply") from None


def _int_limit_reason(e: ValueError) -> str:
    """The one ValueError json raises outside JSONDecodeError: an integer literal with more
    digits than ``sys.get_int_max_str_digits()`` (CPython refuses to convert it)."""
    import sys

    return (f"a number with more than {sys.get_int_max_str_digits():,} digits "
            f"(not a value this file can hold)" if "digits" in str(e) else f"bad value ({e})")


def read_bytes(path: Path | str, what: str = "file", max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The file's bytes, refusing directories, unreadable and over-large files with one line.
    Only a regular file is read: a FIFO would block the program for ever, a device (``/dev/zero``)
    has no end; both are refused before a byte is read (the descriptor's own type is checked,
    so a path swapped after the check cannot slip through), and at most ``max_bytes`` are read
    even when the file grows meanwhile."""
    p = Path(path)
    try:
        if p.is_dir():
            raise BadJSON(f"{what} {p} is a directory, not a file")
        regular_file(p, what)
        # O_NONBLOCK: opening a FIFO that appeared since the check cannot hang
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise BadJSON(f"{what} {p} is {_kind(st.st_mode)}, not a regular file")
            if st.st_size > max_bytes:
                raise BadJSON(f"{what} {p} is {st.st_size:,} bytes; the limit is {max_bytes:,}")
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise BadJSON(f"{what} {p} is over {max_bytes:,} bytes, the limit")
        return data
    except OSError as e:
        raise BadJSON(f"cannot read {what} {p}: {e.strerror or e}") from None


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def regular_file(path: Path | str, what: str = "file") -> Path:
    """``path`` when it names a regular file (symlinks followed); BadJSON naming what it is
    otherwise (a FIFO, a device, a socket, a directory). OSError (missing, no permission) is
    left to the caller, which knows how to name it."""
    p = Path(path)
    mode = os.stat(p).st_mode
    if not stat.S_ISREG(mode):
        raise BadJSON(f"{what} {p} is {_kind(mode)}, not a regular file")
    return p


def read_stream(stream: Any, what: str, max_bytes: int, chunk: int = 1 << 16) -> bytes:
    """At most ``max_bytes`` from a binary stream (standard input, a pipe): reading stops one
    byte past the limit, so ``yes |`` or a 400 MB pipe costs ``max_bytes`` of memory, not all
    of it, before the one-line refusal."""
    parts: list[bytes] = []
    got = 0
    while got <= max_bytes:
        b = stream.read(min(chunk, max_bytes + 1 - got))
        if not b:
            break
        parts.append(b)
        got += len(b)
    if got > max_bytes:
        raise BadJSON(f"{what} is more than {max_bytes:,} bytes; the limit is {max_bytes:,}")
    return b"".join(parts)


def read_text(path: Path | str, what: str = "file", max_bytes: int = MAX_FILE_BYTES) -> str:
    data = read_bytes(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise BadJSON(f"{Path(path).name} line {line}: not UTF-8 text (byte {e.start})") from None


def load(path: Path | str, what: str = "file", max_bytes: int = MAX_FILE_BYTES) -> Any:
    """A whole-file JSON document."""
    return loads(read_text(path, what, max_bytes), Path(path).name)


def iter_jsonl(path: Path | str, what: str = "file", max_bytes: int = MAX_FILE_BYTES,
               *, strict: bool = True) -> Iterator[tuple[int, Any, Optional[str]]]:
    """(line number, parsed object or None, error or None) per non-blank line. ``strict``
    raises the first error instead of yielding it."""
    text = read_text(path, what, max_bytes)
    name = Path(path).name
    # "\n" only: str.splitlines also breaks at U+2028, U+2029, NEL and others, which JSON
    # strings may hold raw (json.dumps(ensure_ascii=False) writes them so)
    for no, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES:
            err = f"{name} line {no}: {len(line):,} characters; the limit is {MAX_LINE_BYTES:,}"
            if strict:
                raise BadJSON(err)
            yield no, None, err
            continue
        try:
            yield no, loads(line, f"{name} line {no}"), None
        except BadJSON as e:
            if strict:
                raise
            yield no, None, str(e)


def complete_line(raw: bytes) -> Optional[dict[str, Any]]:
    """A results line is complete when it parses to an object (its newline is not the test)."""
    try:
        obj = loads(raw, "line")
    except BadJSON:
        return None
    return obj if isinstance(obj, dict) else None
