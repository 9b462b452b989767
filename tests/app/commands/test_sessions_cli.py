"""`tokenforge sessions list | show | export | rename | delete` over a saved variants tree (rows
written as the chat's recorder writes them: a first answer, a regenerated and a forced variant
at the middle turn, a partial answer a dead process left streaming). Names and messages carry
control characters, a bidi override and markup: the output shows them escaped, never raw."""
from __future__ import annotations

import json

import pytest

from app.cli import main
from engine.sessions.store import SavedTurn, SessionStore, sessions_dir

RAW = ("\x1b", "\x9b", "\u202e", "\x07")  # what must never reach the terminal raw
NAME = "kittens [bold]x[/] \u202eevil"


def _info(tid: int, text: str, forced: bool = False) -> dict:
    return {"id": tid, "text": text, "logprob": -0.5, "entropy": 1.0, "rank": 1, "forced": forced,
            "alternatives": [{"id": tid, "text": text, "logprob": -0.5},
                             {"id": tid + 1, "text": "x", "logprob": -1.5}]}


@pytest.fixture
def saved(tmp_path):
    st = SessionStore(sessions_dir() / "sessions.db")
    st.create("older", "m", "h", None, {})
    st.add_turn("older", SavedTurn("first of the older one", [1], "ok", [2]), model_id="m",
                weights_hash="h", sampling={})
    st.create(NAME, "tiny", "h", "Be brief.", {"temperature": 0.0})
    keys = []

    def add(user, answer, prev, how="answer", source=None, fork_at=0, state="done"):
        t = SavedTurn(user, [1, 2], answer, [10, 11, 12], {"new_tokens": 3, "stop_reason": "eos"},
                      prev=prev, source=source, fork_at=fork_at, how=how, state=state,
                      infos=[_info(10, "He"), _info(11, "llo", forced=how == "force"), _info(12, "!")])
        key = st.add_turn(NAME, t, model_id="tiny", weights_hash="h", sampling={})
        keys.append(key)
        return key

    a = add("Hello \x1b[31mred\x1b[0m", "Hi \x9b2J there", None)
    b = add("Tell me about kittens", "They purr.", a)
    add("More", "Soft fur.", b)
    r = add("Tell me about kittens", "They nap.", a, how="regenerate")
    f = add("Tell me about kittens", "They jump", a, how="force", source=r, fork_at=1,
            state="streaming")  # a process that died mid-answer
    st.finish_path(NAME, f, [1, 2, 3], 0)
    st.close()
    return keys


def _run(capsys, *argv):
    code = main(["sessions", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _inert(s):
    assert not any(c in s for c in RAW), repr(s)


def test_list(saved, capsys):
    code, out, err = _run(capsys, "list")
    assert code == 0
    _inert(out)
    assert out.index("kittens") < out.index("older")  # most recent first
    assert "\\u202e" in out or "\\x1b" in out or "evil" in out
    code, out, _ = _run(capsys, "list", "--json")
    rows = json.loads(out)
    _inert(out)
    assert [r["name"] for r in rows] == [NAME, "older"]
    assert rows[0]["turns"] == 2 and rows[0]["variants"] == 5


def test_show_text_and_json(saved, capsys):
    code, out, err = _run(capsys, "show", NAME)
    assert code == 0, err
    _inert(out)
    assert "They jump" in out and "variant 3/3" in out and "stopped" in out  # every answer at the turn
    assert "[bold]x[/]" in out  # markup in a name is text
    code, out, _ = _run(capsys, "show", NAME, "--json")
    _inert(out)
    doc = json.loads(out)
    assert doc["kind"] == "session" and doc["model"] == "tiny"
    res = doc["result"]
    assert res["name"] == NAME and len(res["nodes"]) == 5
    assert [t["answer"] for t in res["turns"]] == ["Hi \x9b2J there", "They jump"]
    assert res["turns"][1]["variant"] == 3 and res["turns"][1]["variants"] == 3
    assert res["turns"][1]["state"] == "stopped"
    nodes = {n["key"]: n for n in res["nodes"]}
    forced = nodes[saved[4]]
    assert forced["how"] == "force" and forced["source"] == saved[3] and forced["fork_at"] == 1
    assert forced["tokens"][1]["forced"] and forced["answer_ids"] == [10, 11, 12]
    assert nodes[saved[2]]["prev"] == saved[1]


def test_export(saved, capsys, tmp_path):
    code, out, _ = _run(capsys, "export", NAME)
    assert code == 0 and "**Assistant:** They jump" in out
    _inert(out)
    f = tmp_path / "s.md"
    code, _, err = _run(capsys, "export", NAME, "--markdown", str(f))
    assert code == 0 and "wrote" in err
    md = f.read_text(encoding="utf-8")
    assert "Hello \\x1b[31mred" in md  # read in terminals too: inert as well
    code, _, err = _run(capsys, "export", NAME, "--markdown", str(f))
    assert code == 2 and "exists" in err and err.count("\n") == 1
    assert _run(capsys, "export", NAME, "--markdown", str(f), "--force")[0] == 0


def test_rename_and_delete(saved, capsys):
    code, _, err = _run(capsys, "rename", NAME, "older")
    assert code == 2 and "already exists" in err
    code, _, err = _run(capsys, "rename", NAME, "cats")
    assert code == 0 and "renamed" in err
    _inert(err)
    code, out, _ = _run(capsys, "list", "--json")
    assert [r["name"] for r in json.loads(out)] == ["cats", "older"]
    code, _, err = _run(capsys, "delete", "cats")
    assert code == 0 and "deleted" in err
    code, _, err = _run(capsys, "show", "cats")
    assert code == 2 and "no saved session named 'cats'" in err
    assert _run(capsys, "delete", "nope")[0] == 2
    code, out, _ = _run(capsys, "list")
    assert "older" in out and "cats" not in out


def test_empty_store(capsys):
    code, out, _ = _run(capsys, "list")
    assert code == 0 and "no saved sessions" in out


_HOLDER = """
import sys
from pathlib import Path
from engine.sessions.writer_lock import session_lock
lock = session_lock(Path(sys.argv[1]), sys.argv[2]).acquire()
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
lock.release()
"""


@pytest.mark.slow
def test_rename_and_delete_are_refused_while_another_process_writes(saved, capsys):
    """One writer per session: a second process holding the session's writer lock (what a
    `chat --session` or the TUI's chat does while the session is open) makes rename and delete
    refuse, naming that process, with the session left as it was; once it lets go they work."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(sessions_dir() / "sessions.db"),
                               "older"], cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for argv in (("delete", "older"), ("rename", "older", "newer"),
                     ("rename", NAME, "older")):  # the new name is written by it too
            code, _, err = _run(capsys, *argv)
            assert code == 2 and f"process {holder.pid}" in err and "in use" in err, (argv, err)
            assert err.count("\n") <= 2
        code, out, _ = _run(capsys, "list", "--json")
        assert sorted(r["name"] for r in json.loads(out)) == sorted([NAME, "older"])
    finally:
        holder.stdin.close()
        holder.wait(60)
    assert holder.returncode == 0
    code, _, err = _run(capsys, "rename", "older", "newer")
    assert code == 0 and "renamed" in err
    code, _, err = _run(capsys, "delete", "newer")
    assert code == 0 and "deleted" in err


def test_the_writer_renames_its_own_session_and_keeps_writing_it(saved):
    """The chat that has a session open renames it (the TUI's F7 on the open session): its
    lock moves to the new name, so the old name is free and the new one refused to others."""
    from engine.locks import LockHeld
    from engine.sessions.writer_lock import delete_session, rename_session, session_lock

    st = SessionStore(sessions_dir() / "sessions.db")
    mine = session_lock(st.path, "older").acquire()
    with pytest.raises(LockHeld):
        delete_session(st, None, "older")
    new, lock = rename_session(st, "older", "renamed", held=mine)
    assert new == "renamed" and lock is not None and lock is not mine
    with pytest.raises(LockHeld):
        session_lock(st.path, "renamed").acquire()
    session_lock(st.path, "older").acquire().release()  # the old name is free
    assert [t.user for t in st.get("renamed").turns] == ["first of the older one"]
    lock.release()
    from engine.sessions.snapshot import SnapshotStore

    assert delete_session(st, SnapshotStore(sessions_dir() / "snapshots"), "renamed") == []
    assert not st.exists("renamed")
    st.close()

