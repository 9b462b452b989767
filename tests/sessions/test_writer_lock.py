"""One writer per saved session, inside one process too (the TUI opening a session another
window or a `chat --session` holds): the second writer is refused naming the holder, the first
one's close (or a new conversation) lets it go."""
from __future__ import annotations

import os

import pytest

from engine.lm.config import SamplingConfig
from engine.locks import LockHeld
from engine.sessions.persist import PersistentChat
from engine.sessions.snapshot import SnapshotStore
from engine.sessions.store import SessionStore

GREEDY = SamplingConfig(max_new_tokens=3, temperature=0.0)


def _chat(lm, tmp_path, name="s"):
    return PersistentChat(lm, name, store=SessionStore(tmp_path / "s.db"),
                          snapshots=SnapshotStore(tmp_path / "snap"), sampling=GREEDY)


def test_second_writer_is_refused_until_the_first_closes(tiny_lm, tmp_path):
    first = _chat(tiny_lm, tmp_path)
    first.send("Hello")
    with pytest.raises(LockHeld) as ei:
        _chat(tiny_lm, tmp_path)
    assert f"process {os.getpid()}" in str(ei.value) and "session 's'" in str(ei.value)
    other = _chat(tiny_lm, tmp_path, "t")  # another session of the same database is free
    other.close()
    first.close()
    again = _chat(tiny_lm, tmp_path)
    assert again.report.how != "new" and [t.user for t in again.all_turns] == ["Hello"]
    again.close()


def test_a_recorder_lets_go_when_released(tiny_lm, tmp_path):
    first = _chat(tiny_lm, tmp_path)
    first.recorder.release()  # what the chat screen's new conversation does
    second = _chat(tiny_lm, tmp_path)
    second.close()
    first.close()
