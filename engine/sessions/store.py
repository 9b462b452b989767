"""Saved conversations in one sqlite file (stdlib ``sqlite3``, WAL mode, versioned schema).

What is kept per session: the system prompt, the sampling settings, the model id and a hash of
its weights, and per branch the turns (user text and ids, answer text and ids, the turn's
figures) plus the live conversation's token ids — the truth a KV snapshot is checked against.
A branch starts at a turn of its parent (regenerating an answer makes one); the session's head
branch is the one shown and continued.

Faults (engine.sessions.dbfaults): only a damaged or foreign file — not a database, sqlite's
CORRUPT, another program's or a partial schema, a newer schema — is moved aside
(``sessions.db.bad-<time>``), a fresh one started and :attr:`SessionStore.notice` says so. A fault
of the disk (full, read-only, no permission) is a StorageError naming the path, the file left as
it was. A database held by a second instance raises :class:`StoreBusy` after a short wait
(sqlite's busy timeout); every write is one transaction, so nothing is half-written."""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional
from contextlib import contextmanager

from engine.errors import EngineError, InputError, StorageError, storage_error
from engine.sessions.location import ENV_VAR, sessions_db, sessions_dir  # noqa: F401 (re-exported)
from engine.sessions import dbfaults
from engine.sessions.schema import (_DDL, _TURN_COLS, SCHEMA, TABLES, SavedSession,  # noqa: F401
                                    SavedTurn, SessionInfo, _tx, _upgrade, pack_ids, unpack_ids)
from engine.sessions.search import search_messages
from engine.sessions.row_values import (Bad as _Bad, SessionUnreadable, decoding,  # noqa: F401
                                        ids as _ids, integer as _int, json_of as _json,
                                        saved_turn, shown, text as _text, when as _when)

APP_ID = "tokenforge-sessions"
BUSY_MS = 2000

class StoreBusy(EngineError):
    """The sessions database is held by another tokenforge."""


class SessionStore:
    """One open sessions database. Methods are short transactions; safe to call from one
    thread at a time (the app's runner serialises jobs)."""

    def __init__(self, path: Optional[Path | str] = None) -> None:
        self.path = Path(path) if path else sessions_db()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise storage_error(e, self.path.parent, "no session was changed",
                                "create the sessions folder") from None
        self.notice = ""
        self.lock = threading.RLock()  # one connection, used from the UI thread and a worker
        try:
            self.db = self._open()
        except _Foreign as e:
            aside = dbfaults.move_aside(self.path)
            self.notice = (f"{self.path.name} {e}; it was kept as {aside.name} and a fresh "
                           "sessions database was started")
            try:
                self.db = self._open()
            except StorageError as err:  # the bad file is kept aside; say so in the one message
                raise type(err)(f"{err}; the unusable old database was kept as {aside.name}",
                                hint=err.hint) from None

    # -- opening ------------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        """Connect and check the file is ours. Raises _Foreign (move it aside), StoreBusy or
        StorageError (leave it alone; a file this call created is removed again)."""
        created = [p for p in dbfaults.db_files(self.path) if not p.exists()]
        db: Optional[sqlite3.Connection] = None
        try:
            db = sqlite3.connect(str(self.path), timeout=BUSY_MS / 1000, isolation_level=None,
                                 check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout={BUSY_MS}")
            db.execute("PRAGMA foreign_keys=ON")
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if tables and "meta" not in tables:
                raise _Foreign("is not a tokenforge sessions database")
            # WAL only once the file is known to be ours: switching writes to its header
            if not tables:
                db.execute("PRAGMA journal_mode=WAL")
                with _tx(db):
                    for stmt in _DDL.strip().split(";"):
                        if stmt.strip():
                            db.execute(stmt)
                    db.execute("INSERT INTO meta VALUES ('app', ?), ('schema', ?)", (APP_ID, str(SCHEMA)))
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("app") != APP_ID:
                raise _Foreign("is not a tokenforge sessions database")
            if int(meta.get("schema", "0")) > SCHEMA:
                raise _Foreign(f"has schema {meta['schema']} (this version reads {SCHEMA})")
            missing = [t for t in TABLES if tables and t not in tables]  # a fresh file has all
            if missing:
                raise _Foreign(f"has an incomplete schema (no table {', '.join(missing)})")
            if int(meta.get("schema", "0")) < SCHEMA:
                _upgrade(db)
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            dbfaults.probe_write(db)  # read-only: refused now, not after an answer
            return db
        except sqlite3.Error as e:
            if db is not None:
                db.close()
            kind = dbfaults.kind(e)
            if kind == "corrupt":         # "file is not a database", a malformed schema or page
                raise _Foreign(f"is corrupt or not a database ({e})") from None
            if kind == "other":           # our own queries fail on its tables: another schema
                raise _Foreign(f"is not a tokenforge sessions database ({e})") from None
            dbfaults.forget_created(self.path, created)
            if kind != "busy":
                dbfaults.forget_side_files(self.path, created)
            if kind == "busy":
                raise self._busy() from None
            raise dbfaults.storage_error(e, kind, self.path, "open", "the database file was left "
                                         "as it was, nothing moved or deleted", ENV_VAR) from None
        except _Foreign:
            if db is not None:
                db.close()
            raise
        except BaseException:
            if db is not None:
                db.close()
            dbfaults.forget_created(self.path, created)
            raise

    def _busy(self) -> StoreBusy:
        return StoreBusy(f"the sessions database {self.path} is in use by another tokenforge",
                         hint="close the other instance, or set TOKENFORGE_SESSIONS to another folder")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One transaction; a write inside another write of this store joins it."""
        with self.lock:
            if self.db.in_transaction:
                yield self.db
                return
            with self._one_tx() as db:
                yield db

    @contextmanager
    def _one_tx(self) -> Iterator[sqlite3.Connection]:
        try:
            with _tx(self.db, immediate=True):
                yield self.db
        except sqlite3.Error as e:
            kind = dbfaults.kind(e)
            if kind == "busy":
                raise self._busy() from None
            if kind == "corrupt":
                raise StorageError(f"the sessions database {self.path} is damaged ({e}); this "
                                   "change was not saved", hint="restart to have it kept aside "
                                   "and a fresh one started") from None
            raise dbfaults.storage_error(e, kind, self.path, "write", "this change was not saved "
                                         "and the saved sessions are as they were", ENV_VAR) from None

    def close(self) -> None:
        self.db.close()


    # -- reading ------------------------------------------------------------------------------
    def _row(self, name: str) -> tuple[Any, Any]:
        """(id, head branch) of a session as stored, unchecked: InputError when there is none."""
        row = self.db.execute("SELECT id, head_branch FROM sessions WHERE name=?", (name,)).fetchone()
        if row is None:
            raise InputError(f"no saved session named {name!r}")
        return row

    def _sid(self, name: str) -> tuple[int, int]:
        sid, head = self._row(name)
        with decoding(self.path, name):
            return _int(sid, "its id"), _int(head, "its head branch")

    def exists(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM sessions WHERE name=?", (name,)).fetchone() is not None

    def list(self) -> list[SessionInfo]:
        """Every session, most recently updated first."""
        out = []
        for sid, name, created, updated, model, head, weights in self.db.execute(
                "SELECT id, name, created, updated, model_id, head_branch, weights_hash FROM "
                "sessions ORDER BY updated DESC, id DESC").fetchall():
            label = name if isinstance(name, str) else shown(name)
            try:
                turns = self._branch_turns(_int(head, "its head branch"))
                preview = _preview(turns[0].user) if turns else ""
                variants = int(self.db.execute(
                    "SELECT COUNT(*) FROM turns WHERE branch_id IN (SELECT id FROM branches "
                    "WHERE session_id=?)", (sid,)).fetchone()[0])
                out.append(SessionInfo(_text(name, "its name"), _when(created, "its created time"),
                                       _when(updated, "its updated time"), _text(model, "its model id"),
                                       len(turns), preview, variants, _text(weights, "its weights hash")))
            except _Bad as e:  # listed, with why it cannot be opened; the others are unaffected
                out.append(SessionInfo(label, 0.0, 0.0, model if isinstance(model, str) else "",
                                       0, "", 0, "", problem=str(e)))
        return out

    def search(self, text: str, limit: int = 200) -> list[tuple[str, str, str]]:
        """(session, role, snippet) for every message containing ``text`` (case-insensitive)."""
        return search_messages(self.db, text, limit)

    def _chain(self, branch: int) -> list[tuple[int, int]]:
        """(branch, its fork point in its parent) from the root down to ``branch``."""
        chain: list[tuple[int, int]] = []
        b: Optional[int] = branch
        while b is not None:
            row = self.db.execute("SELECT parent, fork_turn FROM branches WHERE id=?", (b,)).fetchone()
            if row is None:
                break
            chain.append((b, _int(row[1], "a branch's fork point")))
            b = None if row[0] is None else _int(row[0], "a branch's parent")
            if len(chain) > 100_000:
                raise _Bad("its branches form a cycle")
        return chain[::-1]

    def _count(self, branch: int) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM turns WHERE branch_id=?", (branch,)).fetchone()[0])

    def _locate(self, head: int, index: int) -> tuple[int, int]:
        """(branch, local index) where turn ``index`` of the head's conversation lives (or, for
        the next new turn, the head and its own count)."""
        chain = self._chain(head)
        offset = 0
        for j, (bid, _) in enumerate(chain):
            visible = chain[j + 1][1] if j + 1 < len(chain) else self._count(bid)
            if index < offset + visible or j == len(chain) - 1:
                return bid, index - offset
            offset += visible
        return head, index

    def _branch_turns(self, branch: int) -> list[SavedTurn]:
        """The turns of a branch: each ancestor's turns before the point its child forked, then
        the branch's own."""
        chain = self._chain(branch)
        turns: list[SavedTurn] = []
        for j, (bid, _) in enumerate(chain):
            limit = chain[j + 1][1] if j + 1 < len(chain) else None
            for r in self.db.execute(f"SELECT {_TURN_COLS} FROM turns WHERE branch_id=? ORDER BY idx",
                                     (bid,)).fetchall():
                if limit is None or _int(r[6], "a turn's index") < limit:
                    turns.append(saved_turn(r))
        return turns

    def nodes(self, name: str) -> list[SavedTurn]:
        """Every exchange of a session (its whole variants tree), oldest first."""
        sid, _ = self._sid(name)
        with decoding(self.path, name):
            return [saved_turn(r) for r in self.db.execute(
                f"SELECT {_TURN_COLS} FROM turns WHERE branch_id IN (SELECT id FROM branches WHERE "
                "session_id=?) ORDER BY created, id", (sid,)).fetchall()]

    def get(self, name: str) -> SavedSession:
        sid, head = self._sid(name)
        s = self.db.execute("SELECT model_id, weights_hash, system, sampling, created, updated, "
                            "model_spec FROM sessions WHERE id=?", (sid,)).fetchone()
        b = self.db.execute("SELECT conv_ids, live_from, snapshot FROM branches WHERE id=?",
                            (head,)).fetchone()
        with decoding(self.path, name):
            if b is None:
                raise _Bad("its head branch does not exist")
            branches = [_int(r[0], "a branch id") for r in self.db.execute(
                "SELECT id FROM branches WHERE session_id=? ORDER BY id", (sid,))]
            system = None if s[2] is None else _text(s[2], "its system prompt")
            return SavedSession(name=name, model_id=_text(s[0], "its model id"),
                                weights_hash=_text(s[1], "its weights hash"), system=system,
                                sampling=_json(s[3], "its sampling settings", dict, {}), branch=head,
                                branches=branches, turns=self._branch_turns(head),
                                conv_ids=_ids(b[0], "its conversation's ids"),
                                live_from=_int(b[1], "its live point"),
                                snapshot=_text(b[2], "its snapshot key"),
                                created=_when(s[4], "its created time"),
                                updated=_when(s[5], "its updated time"), nodes=self.nodes(name),
                                model_spec=_text(s[6], "its model spec"))

    # -- writing ------------------------------------------------------------------------------
    def create(self, name: str, model_id: str, weights_hash: str, system: Optional[str],
               sampling: dict[str, Any]) -> None:
        name = _check_name(name)
        now = time.time()
        with self._write() as db:
            if db.execute("SELECT 1 FROM sessions WHERE name=?", (name,)).fetchone():
                raise InputError(f"a session named {name!r} already exists")
            cur = db.execute("INSERT INTO sessions (name, created, updated, model_id, weights_hash, "
                             "system, sampling) VALUES (?,?,?,?,?,?,?)",
                             (name, now, now, model_id, weights_hash, system, json.dumps(sampling)))
            sid = cur.lastrowid
            b = db.execute("INSERT INTO branches (session_id, created) VALUES (?,?)", (sid, now)).lastrowid
            db.execute("UPDATE sessions SET head_branch=? WHERE id=?", (b, sid))

    def save_turn(self, name: str, index: int, turn: SavedTurn, conv_ids: list[int], live_from: int,
                  *, model_id: str, weights_hash: str, sampling: dict[str, Any],
                  snapshot: str = "") -> int:
        """Record a finished turn as turn ``index`` of the head branch's conversation, and the
        live conversation's ids, in one transaction. A turn at an index the conversation already
        has (a regenerated answer) becomes a variant there, so the old answer stays reachable."""
        with self._write():
            _, head = self._sid(name)
            path = self._branch_turns(head)
            turn.prev = path[index - 1].key if 0 < index <= len(path) else None
            key = self.add_turn(name, turn, model_id=model_id, weights_hash=weights_hash,
                                sampling=sampling)
            self.finish_path(name, key, conv_ids, live_from, snapshot)
        return key

    def add_turn(self, name: str, turn: SavedTurn, *, model_id: str, weights_hash: str,
                 sampling: dict[str, Any], model_spec: Optional[str] = None) -> int:
        """Save a new exchange (its answer may still be streaming: ``turn.state``) after the
        exchange ``turn.prev`` and make its path the session's head; returns its row. It goes at
        the end of its previous exchange's branch when that is where the branch ends, else into
        a new branch forked there (so every older path is kept as it was)."""
        now = time.time()
        with self._write() as db:
            sid, _ = self._sid(name)
            if turn.prev is None:
                root = db.execute("SELECT id FROM branches WHERE session_id=? AND parent IS NULL "
                                  "ORDER BY id LIMIT 1", (sid,)).fetchone()
                if root is None:
                    raise InputError(f"session {name!r} has no root branch")
                owner, idx = int(root[0]), 0
            else:
                row = db.execute("SELECT t.branch_id, t.idx FROM turns t JOIN branches b ON "
                                 "t.branch_id=b.id WHERE t.id=? AND b.session_id=?",
                                 (turn.prev, sid)).fetchone()
                if row is None:
                    raise InputError(f"session {name!r} has no exchange {turn.prev}")
                owner, idx = int(row[0]), int(row[1]) + 1
            taken = db.execute("SELECT 1 FROM turns WHERE branch_id=? AND idx=?", (owner, idx)).fetchone()
            branch = owner
            if taken:
                branch = db.execute("INSERT INTO branches (session_id, parent, fork_turn, created) "
                                    "VALUES (?,?,?,?)", (sid, owner, idx, now)).lastrowid
                idx = 0
            key = db.execute(
                "INSERT INTO turns (branch_id, idx, user, user_ids, answer, answer_ids, metrics, "
                "created, prev, source, fork_at, how, state, infos) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (branch, idx, turn.user, pack_ids(turn.user_ids), turn.answer,
                 pack_ids(turn.answer_ids), json.dumps(turn.metrics) if turn.metrics else None,
                 now, turn.prev, turn.source, int(turn.fork_at), turn.how, turn.state,
                 json.dumps(turn.infos) if turn.infos else None)).lastrowid
            db.execute("UPDATE sessions SET head_branch=?, updated=?, model_id=?, weights_hash=?, "
                       "sampling=? WHERE id=?", (branch, now, model_id, weights_hash,
                                                 json.dumps(sampling), sid))
            if model_spec:
                db.execute("UPDATE sessions SET model_spec=? WHERE id=?", (model_spec, sid))
        turn.key = int(key)
        return int(key)

    def update_turn(self, key: int, turn: SavedTurn) -> None:
        """Write an exchange's answer as it is now (streamed so far, or final)."""
        with self._write() as db:
            cur = db.execute("UPDATE turns SET answer=?, answer_ids=?, metrics=?, state=?, infos=? "
                             "WHERE id=?", (turn.answer, pack_ids(turn.answer_ids),
                                           json.dumps(turn.metrics) if turn.metrics else None,
                                           turn.state, json.dumps(turn.infos) if turn.infos else None,
                                           key))
            if cur.rowcount:
                db.execute("UPDATE sessions SET updated=? WHERE id=(SELECT b.session_id FROM turns t "
                           "JOIN branches b ON t.branch_id=b.id WHERE t.id=?)", (time.time(), key))

    def finish_path(self, name: str, key: Optional[int], conv_ids: list[int], live_from: int,
                    snapshot: str = "") -> None:
        """The conversation now ends at exchange ``key`` (None: empty): make its branch the head
        and record the live ids, how many turns were dropped, and its KV snapshot."""
        with self._write() as db:
            sid, head = self._sid(name)
            if key is not None:
                row = db.execute("SELECT t.branch_id FROM turns t JOIN branches b ON t.branch_id=b.id "
                                 "WHERE t.id=? AND b.session_id=?", (key, sid)).fetchone()
                if row is None:
                    raise InputError(f"session {name!r} has no exchange {key}")
                head = int(row[0])
            else:
                head = int(db.execute("SELECT id FROM branches WHERE session_id=? AND parent IS NULL "
                                      "ORDER BY id LIMIT 1", (sid,)).fetchone()[0])
            db.execute("UPDATE branches SET conv_ids=?, live_from=?, snapshot=? WHERE id=?",
                       (pack_ids(conv_ids), live_from, snapshot, head))
            db.execute("UPDATE sessions SET head_branch=? WHERE id=?", (head, sid))

    def snapshots_in_use(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT snapshot FROM branches WHERE snapshot != ''")
                if isinstance(r[0], str)}

    def rename(self, old: str, new: str) -> None:
        new = _check_name(new)
        with self._write() as db:
            self._sid(old)
            if old != new and db.execute("SELECT 1 FROM sessions WHERE name=?", (new,)).fetchone():
                raise InputError(f"a session named {new!r} already exists")
            db.execute("UPDATE sessions SET name=? WHERE name=?", (new, old))

    def delete(self, name: str) -> list[str]:
        """Remove a session; returns the snapshot keys it held (the caller deletes the files).
        Works on a session that cannot be read too: that is how one is removed."""
        with self._write() as db:
            sid = self._row(name)[0]  # its head branch may be unreadable: not needed here
            keys = [r[0] for r in db.execute("SELECT snapshot FROM branches WHERE session_id=? "
                                             "AND snapshot != ''", (sid,)) if isinstance(r[0], str)]
            db.execute("DELETE FROM sessions WHERE id=?", (sid,))
        return keys

    def unique_name(self, base: str) -> str:
        base = _check_name(base)
        name, n = base, 2
        while self.exists(name):
            name, n = f"{base} ({n})", n + 1
        return name


def _preview(user: str) -> str:
    """A list row's glimpse of the first message: its first line with text (a hand-edited
    database can hold an empty message), at most 60 characters."""
    return next((line for line in user.splitlines() if line.strip()), "")[:60]


def _locked(fn: Any) -> Any:
    import functools

    @functools.wraps(fn)
    def wrapper(self: "SessionStore", *a: Any, **kw: Any) -> Any:
        with self.lock:
            return fn(self, *a, **kw)
    return wrapper


for _name in ("exists", "list", "search", "get", "nodes", "snapshots_in_use", "unique_name"):
    setattr(SessionStore, _name, _locked(getattr(SessionStore, _name)))


class _Foreign(Exception):
    """The file at the database path cannot be used as ours."""


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise InputError("a session name cannot be empty")
    if len(name) > 200 or any(ord(c) < 32 for c in name):
        raise InputError("a session name must be one line of at most 200 characters")
    return name
