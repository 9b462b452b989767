"""A sessions database whose columns hold values this tool never writes (sqlite keeps any type in
any column): the store lists the session as unreadable beside the others, reading it is one
SessionUnreadable naming the session and the column, the file is left unchanged, and delete
still removes it."""
from __future__ import annotations

import hashlib
import sqlite3

import pytest

from engine.sessions.store import SavedTurn, SessionStore, SessionUnreadable


def _store(tmp_path) -> SessionStore:
    st = SessionStore(tmp_path / "sessions.db")
    for name in ("good", "bad"):
        st.create(name, "m", "h", None, {"temperature": 0.2})
        st.save_turn(name, 0, SavedTurn("Hello", [1, 2], "Hi", [3]), [1, 2, 3], 0, model_id="m",
                     weights_hash="h", sampling={"temperature": 0.2})
    return st


def _poke(st: SessionStore, sql: str, *args) -> None:
    db = sqlite3.connect(st.path)
    db.execute(sql, args)
    db.commit()
    db.close()


@pytest.mark.parametrize("sql, value, column", [
    ("UPDATE turns SET answer_ids=? WHERE branch_id IN (SELECT b.id FROM branches b JOIN sessions s "
     "ON b.session_id=s.id WHERE s.name='bad')", "not ids", "an answer's ids"),
    ("UPDATE turns SET user=? WHERE branch_id IN (SELECT b.id FROM branches b JOIN sessions s "
     "ON b.session_id=s.id WHERE s.name='bad')", b"\x00\xff", "a user message"),
    ("UPDATE turns SET infos=? WHERE branch_id IN (SELECT b.id FROM branches b JOIN sessions s "
     "ON b.session_id=s.id WHERE s.name='bad')", '{"a": 1}', "token data"),
    ("UPDATE sessions SET head_branch=? WHERE name='bad'", "x", "head branch"),
    ("UPDATE turns SET created=? WHERE branch_id IN (SELECT b.id FROM branches b JOIN sessions s "
     "ON b.session_id=s.id WHERE s.name='bad')", "yesterday", "a turn's time"),
    ("UPDATE sessions SET updated=? WHERE name='bad'", 2 ** 62, "its updated time"),
])
def test_wrong_type_is_one_error_and_the_others_stay_readable(tmp_path, sql, value, column):
    st = _store(tmp_path)
    _poke(st, sql, value)
    before = hashlib.sha256(st.path.read_bytes()).hexdigest()
    infos = {i.name: i for i in st.list()}
    assert infos["good"].problem == "" and infos["good"].turns == 1 and infos["good"].variants == 1
    assert column in infos["bad"].problem
    assert st.get("good").turns[0].answer == "Hi"
    with pytest.raises(SessionUnreadable) as e:
        st.get("bad")
    assert "'bad'" in str(e.value) and column in str(e.value) and str(st.path) in str(e.value)
    assert hashlib.sha256(st.path.read_bytes()).hexdigest() == before  # reading changed nothing
    st.delete("bad")  # the way out still works
    assert [i.name for i in st.list()] == ["good"]
    st.close()


def test_a_name_that_is_not_text_is_listed_as_unreadable(tmp_path):
    st = _store(tmp_path)
    _poke(st, "UPDATE sessions SET name=? WHERE name='bad'", b"\x00\xff\x01")
    infos = st.list()
    assert [i.name for i in infos if not i.problem] == ["good"]
    (bad,) = [i for i in infos if i.problem]
    assert bad.name == "<a bytes name>" and "its name is not text" in bad.problem
    st.close()


def test_sampling_that_is_not_an_object_is_unreadable(tmp_path):
    st = _store(tmp_path)
    _poke(st, "UPDATE sessions SET sampling=? WHERE name='bad'", "[1, 2]")
    with pytest.raises(SessionUnreadable, match="sampling settings is not a JSON object"):
        st.get("bad")
    assert st.get("good").sampling == {"temperature": 0.2}
    st.close()


def test_sessions_list_and_show_say_so_in_one_line(tmp_path, monkeypatch, capfd):
    from app.cli import main

    monkeypatch.setenv("TOKENFORGE_SESSIONS", str(tmp_path))
    st = _store(tmp_path)
    _poke(st, "UPDATE turns SET answer_ids=? WHERE branch_id IN (SELECT b.id FROM branches b JOIN "
          "sessions s ON b.session_id=s.id WHERE s.name='bad')", "not ids")
    st.close()
    capfd.readouterr()
    assert main(["sessions", "list"]) == 0
    out, err = capfd.readouterr()
    assert "unreadable" in out and "good" in out and "Traceback" not in out + err
    assert main(["sessions", "show", "bad"]) != 0
    out, err = capfd.readouterr()
    assert "cannot be read" in out + err and "Traceback" not in out + err
    assert len((out + err).strip().splitlines()) <= 3


@pytest.mark.parametrize("user, preview", [("", ""), ("\n", ""), ("\n \nsecond line", "second line")])
def test_an_empty_first_message_lists_with_its_first_line_of_text(tmp_path, user, preview):
    """A text value the tool never writes (an empty message or one starting with blank lines,
    from a hand edit) is still text: listed, previewed by its first line with text, and opens."""
    st = _store(tmp_path)
    _poke(st, "UPDATE turns SET user=? WHERE branch_id IN (SELECT b.id FROM branches b JOIN "
          "sessions s ON b.session_id=s.id WHERE s.name='bad')", user)
    infos = {i.name: i for i in st.list()}
    assert infos["bad"].problem == "" and infos["bad"].preview == preview and infos["bad"].turns == 1
    assert infos["good"].preview == "Hello"
    assert st.get("bad").turns[0].user == user
    st.close()
