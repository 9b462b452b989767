"""The sqlite session store: round trip, branches, search, rename/delete, and its faults (a
corrupt or foreign file kept aside for a fresh one, a database locked by a second instance)."""
from __future__ import annotations

import sqlite3

import pytest

from engine.errors import InputError
from engine.sessions.store import SavedTurn, SessionStore, StoreBusy, pack_ids, unpack_ids


def _turn(i: int, answer: str = "") -> SavedTurn:
    return SavedTurn(f"question {i}", [i, i + 1], answer or f"answer {i}", [100 + i], {"prefill_tokens": 3})


def _store(tmp_path) -> SessionStore:
    return SessionStore(tmp_path / "s.db")


def test_round_trip_and_wal(tmp_path):
    st = _store(tmp_path)
    st.create("a", "tiny", "h1", "Be kind.", {"temperature": 0.0})
    st.save_turn("a", 0, _turn(0), [1, 2, 3], 0, model_id="tiny", weights_hash="h1",
                 sampling={"temperature": 0.0}, snapshot="k0")
    st.close()
    st = _store(tmp_path)  # a new process: everything comes back
    s = st.get("a")
    assert (s.system, s.model_id, s.weights_hash, s.conv_ids, s.snapshot) == ("Be kind.", "tiny", "h1", [1, 2, 3], "k0")
    assert s.turns == [_turn(0)]
    assert st.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert st.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == "3"
    assert unpack_ids(pack_ids([0, 2**40, 49151])) == [0, 2**40, 49151]


def test_regenerated_turn_is_a_branch(tmp_path):
    st = _store(tmp_path)
    st.create("a", "m", "h", None, {})
    for i in range(3):
        st.save_turn("a", i, _turn(i), [i], 0, model_id="m", weights_hash="h", sampling={})
    first = st.get("a")
    st.save_turn("a", 2, _turn(2, "another answer"), [9], 0, model_id="m", weights_hash="h", sampling={})
    s = st.get("a")
    assert len(s.branches) == 2 and s.branch != first.branch
    assert [t.answer for t in s.turns] == ["answer 0", "answer 1", "another answer"]
    st.save_turn("a", 3, _turn(3), [10], 0, model_id="m", weights_hash="h", sampling={})
    assert [t.user for t in st.get("a").turns] == [f"question {i}" for i in range(4)]
    # a branch of a branch: regenerate turn 1
    st.save_turn("a", 1, _turn(1, "third"), [11], 0, model_id="m", weights_hash="h", sampling={})
    assert [t.answer for t in st.get("a").turns] == ["answer 0", "third"]


def test_list_search_rename_delete(tmp_path):
    st = _store(tmp_path)
    st.create("alpha", "m", "h", None, {})
    st.create("beta", "m", "h", None, {})
    st.save_turn("beta", 0, SavedTurn("Tell me about 100% Kittens", [1], "Kittens purr.", [2]), [1], 0,
                 model_id="m", weights_hash="h", sampling={})
    assert [i.name for i in st.list()] == ["beta", "alpha"]  # most recent first
    assert st.list()[0].turns == 1 and st.list()[0].preview.startswith("Tell me")
    hits = st.search("kitten")
    assert {(n, r) for n, r, _ in hits} == {("beta", "user"), ("beta", "assistant")}
    assert st.search("100%") and not st.search("10_%")  # LIKE wildcards are literal
    with pytest.raises(InputError, match="already exists"):
        st.rename("alpha", "beta")
    st.rename("alpha", "gamma")
    assert st.exists("gamma") and not st.exists("alpha")
    st.delete("beta")
    assert [i.name for i in st.list()] == ["gamma"] and st.search("kitten") == []
    with pytest.raises(InputError, match="no saved session"):
        st.get("beta")
    assert st.unique_name("gamma") == "gamma (2)"


@pytest.mark.parametrize("content, why", [
    (b"this is not sqlite at all" * 100, "corrupt"),
    (None, "not a tokenforge"),  # a valid sqlite file of another program
])
def test_corrupt_or_foreign_file_kept_aside(tmp_path, content, why):
    path = tmp_path / "s.db"
    if content is None:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE recipes (x)")
        db.commit()
        db.close()
    else:
        path.write_bytes(content)
    original = path.read_bytes()
    st = SessionStore(path)
    assert why in st.notice and "kept as" in st.notice
    aside = [p for p in tmp_path.iterdir() if ".bad-" in p.name and not p.name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1 and aside[0].read_bytes() == original
    st.create("fresh", "m", "h", None, {})  # the fresh database works
    assert [i.name for i in st.list()] == ["fresh"]


def test_newer_schema_kept_aside(tmp_path):
    st = _store(tmp_path)
    st.db.execute("UPDATE meta SET value='99' WHERE key='schema'")
    st.close()
    st = _store(tmp_path)
    assert "schema 99" in st.notice


def test_locked_by_second_instance(tmp_path, monkeypatch):
    import engine.sessions.store as store

    monkeypatch.setattr(store, "BUSY_MS", 200)
    st = _store(tmp_path)
    st.create("a", "m", "h", None, {})
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreBusy, match="in use by another tokenforge"):
            st.rename("a", "b")
    finally:
        other.execute("ROLLBACK")
        other.close()
    st.rename("a", "b")  # released: works again
    assert st.exists("b")


def test_bad_names(tmp_path):
    st = _store(tmp_path)
    for bad in ("", "  ", "two\nlines"):
        with pytest.raises(InputError):
            st.create(bad, "m", "h", None, {})
