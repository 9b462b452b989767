"""A fault of the disk is never taken for a corrupt database: a full disk (sqlite's "database or
disk is full", or its "disk I/O error" when the -shm file cannot grow) leaves the healthy
sessions database exactly where and as it was, and says so in one message naming the path.

Two ways: an injected sqlite error (runs everywhere) and a real full disk, a small tmpfs mounted
by the test (root only; skipped when the mount is refused)."""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

import engine.sessions.store as store_mod
from engine.sessions import dbfaults
from engine.errors import DiskFull, StorageError
from engine.sessions.store import SavedTurn, SessionStore
from smalldisk import fill, small_disk


def _turn(i: int) -> SavedTurn:
    return SavedTurn(f"question {i}", [i, i + 1], f"answer {i}", [100 + i])


def _healthy(path: Path, turns: int = 1) -> None:
    st = SessionStore(path)
    st.create("s1", "m", "h", None, {})
    for i in range(turns):
        st.save_turn("s1", i, _turn(i), [i], 0, model_id="m", weights_hash="h", sampling={})
    st.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _aside(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".bad-" in p.name]


class _Failing:
    """A real sqlite connection whose statements matching ``when`` raise ``error`` (the way the
    disk reports being full); everything else goes to the connection."""

    def __init__(self, db: sqlite3.Connection, when: str, error: sqlite3.Error) -> None:
        self._db, self._when, self._error = db, when, error

    def execute(self, sql: str, *a):
        if self._when in sql:
            raise self._error
        return self._db.execute(sql, *a)

    def __getattr__(self, name: str):
        return getattr(self._db, name)


def _inject(monkeypatch, when: str, error: sqlite3.Error) -> None:
    real = sqlite3.connect
    monkeypatch.setattr(store_mod.sqlite3, "connect",
                        lambda *a, **kw: _Failing(real(*a, **kw), when, error))


@pytest.mark.parametrize("when", ["sqlite_master", "journal_mode"])
def test_disk_full_on_open_keeps_the_database(tmp_path, monkeypatch, when):
    path = tmp_path / "sessions.db"
    _healthy(path)
    before = _digest(path)
    _inject(monkeypatch, when, sqlite3.OperationalError("database or disk is full"))
    with pytest.raises(DiskFull) as ei:
        SessionStore(path)
    msg = str(ei.value)
    assert str(path) in msg and "disk is full" in msg and "left as it was" in msg
    assert "free some space" in ei.value.hint
    assert _digest(path) == before and not _aside(tmp_path)
    monkeypatch.undo()  # space freed: the same session, with its turn, and no notice
    st = SessionStore(path)
    assert st.notice == "" and [t.user for t in st.get("s1").turns] == ["question 0"]


def test_disk_full_on_a_new_database_leaves_no_empty_file(tmp_path, monkeypatch):
    path = tmp_path / "sessions.db"
    _inject(monkeypatch, "CREATE TABLE", sqlite3.OperationalError("database or disk is full"))
    with pytest.raises(DiskFull):
        SessionStore(path)
    assert not path.exists() and not _aside(tmp_path)


def test_io_error_with_no_space_is_disk_full_other_faults_are_storage_errors(tmp_path, monkeypatch):
    path = tmp_path / "sessions.db"
    _healthy(path)
    before = _digest(path)
    _inject(monkeypatch, "sqlite_master", sqlite3.OperationalError("disk I/O error"))
    monkeypatch.setattr(dbfaults, "free_bytes", lambda folder: 0)
    with pytest.raises(DiskFull):
        SessionStore(path)
    monkeypatch.setattr(dbfaults, "free_bytes", lambda folder: 1 << 40)
    with pytest.raises(StorageError) as ei:  # plenty of space: an I/O error, not "full"
        SessionStore(path)
    assert not isinstance(ei.value, DiskFull) and "disk I/O error" in str(ei.value)
    _inject(monkeypatch, "sqlite_master", sqlite3.OperationalError("attempt to write a readonly database"))
    with pytest.raises(StorageError, match="read-only|readonly"):
        SessionStore(path)
    assert _digest(path) == before and not _aside(tmp_path)


def test_disk_full_on_a_write_loses_nothing(tmp_path, monkeypatch):
    path = tmp_path / "sessions.db"
    _healthy(path, turns=2)
    real = sqlite3.connect
    st = SessionStore(path)
    st.db = _Failing(st.db, "INSERT INTO turns", sqlite3.OperationalError("database or disk is full"))
    with pytest.raises(DiskFull, match="this change was not saved"):
        st.save_turn("s1", 2, _turn(2), [2], 0, model_id="m", weights_hash="h", sampling={})
    assert not st.db.in_transaction  # rolled back, the connection is usable
    st.db = st.db._db
    assert [t.user for t in st.get("s1").turns] == ["question 0", "question 1"]
    st.save_turn("s1", 2, _turn(2), [2], 0, model_id="m", weights_hash="h", sampling={})
    st.close()
    assert len(real(path).execute("SELECT * FROM turns").fetchall()) == 3 and not _aside(tmp_path)


def test_genuine_corruption_is_still_kept_aside(tmp_path):
    """A malformed schema (sqlite's CORRUPT) and a partial tokenforge schema move the file aside."""
    bad = tmp_path / "a" / "sessions.db"
    bad.parent.mkdir()
    db = sqlite3.connect(bad)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.execute("PRAGMA writable_schema=ON")
    db.execute("UPDATE sqlite_master SET sql='CREATE TABLE t (x' WHERE name='t'")
    db.commit()
    db.close()
    st = SessionStore(bad)
    assert "corrupt" in st.notice and len(_aside(bad.parent)) == 1
    st.close()
    partial = tmp_path / "b" / "sessions.db"
    partial.parent.mkdir()
    db = sqlite3.connect(partial)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('app', 'tokenforge-sessions'), ('schema', '1')")
    db.commit()
    db.close()
    st = SessionStore(partial)
    assert "incomplete schema" in st.notice and len(_aside(partial.parent)) == 1
    st.close()
    other = tmp_path / "c" / "sessions.db"  # another program's `meta` table
    other.parent.mkdir()
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE meta (k, v)")
    db.commit()
    db.close()
    st = SessionStore(other)
    assert "not a tokenforge sessions database" in st.notice and len(_aside(other.parent)) == 1
    st.create("fresh", "m", "h", None, {})
    assert [i.name for i in st.list()] == ["fresh"]


# ---- a real full disk -----------------------------------------------------------------------------
@pytest.fixture
def disk(tmp_path):
    with small_disk(tmp_path / "disk") as mnt:
        yield mnt


def test_full_tmpfs_open_and_write_keep_the_session(disk):
    path = disk / "sessions.db"
    _healthy(path)
    filler = fill(disk)
    before = _digest(path)
    with pytest.raises(DiskFull) as ei:  # a new process on the full disk: no room for -shm/-wal
        SessionStore(path)
    assert str(path) in str(ei.value) and "left as it was" in str(ei.value)
    assert _digest(path) == before and not _aside(disk)
    filler.unlink()
    st = SessionStore(path)  # a store already open when the disk fills up
    assert st.notice == ""
    filler = fill(disk)
    big = SavedTurn("word " * 20000, list(range(20000)), "answer", [1])
    with pytest.raises(DiskFull) as ei:
        st.save_turn("s1", 1, big, list(range(20000)), 0, model_id="m", weights_hash="h", sampling={})
    assert str(path) in str(ei.value) and "not saved" in str(ei.value)
    assert [t.user for t in st.get("s1").turns] == ["question 0"]
    st.close()
    filler.unlink()
    st = SessionStore(path)
    assert st.notice == "" and [t.user for t in st.get("s1").turns] == ["question 0"]
    assert not _aside(disk)
    st.close()


def test_full_tmpfs_lock_leaves_no_empty_lock_file(disk):
    from engine.locks import FileLock, lock_path

    target = disk / "results.jsonl"
    target.write_text('{"id": "r1"}\n')
    fill(disk)
    with pytest.raises(DiskFull) as ei:
        FileLock(target, f"results file {target}").acquire()
    assert "disk is full" in str(ei.value) and "not touched" in str(ei.value)
    assert not lock_path(target).exists()
    assert target.read_text() == '{"id": "r1"}\n'
