"""Typed reading of a sessions database's column values. sqlite keeps any type in any column, so
a file another program wrote (or a hand edit, or a damaged page that still parses) can hold text
where token ids belong, a blob where a name belongs, a timestamp no formatter can show: each
reader returns the value this tool wrote or raises :class:`Bad` naming the column, which the
store turns into one SessionUnreadable message."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from engine.errors import EngineError
from engine.sessions.schema import SavedTurn, unpack_ids


class SessionUnreadable(EngineError):
    """A session row holds a value this tool never writes (sqlite keeps any type in any column:
    another program, a hand edit, a damaged page that still parses). The file is left as it is."""


@contextmanager
def decoding(path: Path, name: Any) -> Iterator[None]:
    """A value of the wrong type in a row becomes one SessionUnreadable naming the session, the
    column and the file (left unchanged), never a traceback from deep in a decoder."""
    try:
        yield
    except Bad as e:
        raise SessionUnreadable(
            f"the saved session {shown(name)} in {path} cannot be read: {e} (a value this tool "
            "does not write); the file is left as it is, and `tokenforge sessions delete NAME` "
            "removes the session") from None


def shown(name: Any) -> str:
    """A session name for a message: quoted text, or what the value is when it is not text."""
    return repr(name) if isinstance(name, str) else f"<a {type(name).__name__} name>"


class Bad(Exception):
    """A column value of the wrong type, while decoding a row (becomes SessionUnreadable)."""


def integer(v: Any, what: str) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise Bad(f"{what} is not an integer")


LATEST = 253402300799.0  # 9999-12-31 23:59:59 UTC: the last time every formatter can show


def when(v: Any, what: str) -> float:
    """A timestamp (seconds since the epoch) a date formatter can show; None reads as 0."""
    if v is None:
        return 0.0
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        try:
            f = float(v)
        except OverflowError:
            f = float("inf")
        if 0.0 <= f <= LATEST:  # also refuses NaN
            return f
        raise Bad(f"{what} is out of range")
    raise Bad(f"{what} is not a number")


def text(v: Any, what: str) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    raise Bad(f"{what} is not text")


def ids(v: Any, what: str) -> list[int]:
    if isinstance(v, (bytes, bytearray, memoryview)) and len(v) % 8 == 0:
        return unpack_ids(v)
    raise Bad(f"{what} is not a list of token ids")


def json_of(v: Any, what: str, kind: type, empty: Any) -> Any:
    if v is None or v == "" or v == b"":
        return empty
    try:
        doc = json.loads(v) if isinstance(v, (str, bytes)) else None
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, kind):
        raise Bad(f"{what} is not a JSON {kind.__name__.replace('dict', 'object')}")
    return doc


def saved_turn(r: Any) -> SavedTurn:
    """One row of the turns table (columns in schema._TURN_COLS order), every value checked."""
    state = r[11] if r[11] in ("done", "stopped") else "stopped"  # streaming: its writer died
    infos = json_of(r[12], "a turn's token data", list, [])
    if not all(isinstance(i, dict) for i in infos):
        raise Bad("a turn's token data is not a list of objects")
    return SavedTurn(text(r[1], "a user message"), ids(r[2], "a user message's ids"),
                     text(r[3], "an answer"), ids(r[4], "an answer's ids"),
                     json_of(r[5], "a turn's figures", dict, None), key=integer(r[0], "a turn's id"),
                     prev=None if r[7] is None else integer(r[7], "a turn's previous turn"),
                     source=None if r[8] is None else integer(r[8], "a turn's source"),
                     fork_at=integer(r[9] or 0, "a turn's fork point"),
                     how=text(r[10], "how a turn was made") or "answer", state=state,
                     infos=infos, created=when(r[13], "a turn's time"))
