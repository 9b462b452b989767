"""The sessions database's layout, torch- and connection-free: the tables (schema 2), the
upgrade of a schema-1 file, the row types read back, and token ids as bytes. The store itself
(engine/sessions/store.py) opens, checks, reads and writes it.

Schema 2 makes every exchange a node of the conversation's variants tree: a turn row keeps the
row of the exchange before it (``prev``), where a forced answer branched (``source``,
``fork_at``), how it was made and whether it finished (``state``: a row left ``streaming`` by
a process that died reads as stopped), and its per-token facts (``infos``, JSON). Branches are
the paths through that tree, as in schema 1: a new exchange goes at the end of its previous
exchange's branch, or into a new branch forked there."""
from __future__ import annotations

import sqlite3
import sys
from array import array
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

SCHEMA = 3  # 2: the variants tree columns of a turn; 3: the session's model spec

_DDL = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created REAL NOT NULL, updated REAL NOT NULL,
    model_id TEXT NOT NULL, weights_hash TEXT NOT NULL, system TEXT, sampling TEXT NOT NULL,
    head_branch INTEGER, model_spec TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS branches (
    id INTEGER PRIMARY KEY, session_id INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    parent INTEGER, fork_turn INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL,
    conv_ids BLOB NOT NULL DEFAULT x'', live_from INTEGER NOT NULL DEFAULT 0,
    snapshot TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY, branch_id INTEGER NOT NULL REFERENCES branches(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL, user TEXT NOT NULL, user_ids BLOB NOT NULL, answer TEXT NOT NULL,
    answer_ids BLOB NOT NULL, metrics TEXT, created REAL NOT NULL, prev INTEGER, source INTEGER,
    fork_at INTEGER NOT NULL DEFAULT 0, how TEXT NOT NULL DEFAULT 'answer',
    state TEXT NOT NULL DEFAULT 'done', infos TEXT, UNIQUE(branch_id, idx));
CREATE INDEX IF NOT EXISTS turns_branch ON turns(branch_id, idx);
"""
TABLES = ("meta", "sessions", "branches", "turns")
#: schema 1 → 2: the tree columns of a turn (a schema-1 file is upgraded in place, once)
_V2_COLUMNS = (("prev", "INTEGER"), ("source", "INTEGER"),
               ("fork_at", "INTEGER NOT NULL DEFAULT 0"), ("how", "TEXT NOT NULL DEFAULT 'answer'"),
               ("state", "TEXT NOT NULL DEFAULT 'done'"), ("infos", "TEXT"))
#: schema 3: what to load to answer in a session again (the spec it was last answered with: a
#: folder, a .gguf, a cached id or "default"); '' when not known (older sessions)
_V3_COLUMNS = (("model_spec", "TEXT NOT NULL DEFAULT ''"),)
#: a turn row's columns, in the order _turn reads them
_TURN_COLS = ("id, user, user_ids, answer, answer_ids, metrics, idx, prev, source, fork_at, how, "
              "state, infos, created, branch_id")



def pack_ids(ids: list[int]) -> bytes:
    """Token ids as little-endian int64 (the same bytes on every machine)."""
    a = array("q", ids)
    if sys.byteorder != "little":
        a.byteswap()
    return a.tobytes()


def unpack_ids(blob: bytes) -> list[int]:
    a = array("q")
    a.frombytes(bytes(blob))
    if sys.byteorder != "little":
        a.byteswap()
    return a.tolist()


@dataclass
class SavedTurn:
    """One saved exchange, a node of the session's variants tree (see engine.lm.chat.Turn):
    ``key`` its row, ``prev`` the row of the exchange before it, ``source``/``fork_at`` where a
    forced answer branched, ``how`` it was made, ``state`` done or stopped (a row a dead process
    left streaming reads as stopped), ``infos`` the per-token facts (dicts of TokenInfo)."""

    user: str
    user_ids: list[int]
    answer: str
    answer_ids: list[int]
    metrics: Optional[dict[str, Any]] = None
    key: Optional[int] = field(default=None, compare=False)  # rows: where, not what
    prev: Optional[int] = field(default=None, compare=False)
    source: Optional[int] = field(default=None, compare=False)
    fork_at: int = 0
    how: str = "answer"
    state: str = "done"
    infos: list[dict[str, Any]] = field(default_factory=list)
    created: float = field(default=0.0, compare=False)


@dataclass
class SessionInfo:
    name: str
    created: float
    updated: float
    model_id: str
    turns: int
    preview: str
    variants: int = 0  # every saved exchange of its variants tree
    weights_hash: str = ""
    problem: str = ""  # why the session cannot be opened (a value this tool did not write), or ""


@dataclass
class SavedSession:
    name: str
    model_id: str
    weights_hash: str
    system: Optional[str]
    sampling: dict[str, Any]
    branch: int
    branches: list[int]
    turns: list[SavedTurn] = field(default_factory=list)
    conv_ids: list[int] = field(default_factory=list)
    live_from: int = 0  # turns before this one were dropped from the context (overflow)
    snapshot: str = ""
    created: float = 0.0
    updated: float = 0.0
    nodes: list[SavedTurn] = field(default_factory=list)  # every exchange, oldest first
    model_spec: str = ""  # what to load to answer in it again ('' when not known)


def _upgrade(db: sqlite3.Connection) -> None:
    """Schema 1 or 2 → 3 in one transaction: the missing columns are added and each turn's previous
    exchange is filled in from the branch structure (the turn before it in its branch, or for a
    branch's first turn the one before its fork point in the parent branch)."""
    with _tx(db, immediate=True):
        for table, cols in (("turns", _V2_COLUMNS), ("sessions", _V3_COLUMNS)):
            have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            for col, decl in cols:
                if col not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {col} {decl}")
        branches = {int(r[0]): (r[1], int(r[2])) for r in
                    db.execute("SELECT id, parent, fork_turn FROM branches")}
        rows = {(int(r[1]), int(r[2])): int(r[0]) for r in db.execute("SELECT id, branch_id, idx FROM turns")}

        def before(branch: int, idx: int) -> Optional[int]:
            while True:
                if idx > 0:
                    return rows.get((branch, idx - 1))
                parent, fork = branches.get(branch, (None, 0))
                if parent is None:
                    return None
                branch, idx = int(parent), fork

        for (branch, idx), key in rows.items():
            db.execute("UPDATE turns SET prev=? WHERE id=?", (before(branch, idx), key))
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA),))


@contextmanager
def _tx(db: sqlite3.Connection, immediate: bool = False) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield
        db.execute("COMMIT")  # may fail too (a full disk): then the transaction is rolled back
    except BaseException:
        if db.in_transaction:  # sqlite may already have rolled back (SQLITE_FULL does)
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        raise


