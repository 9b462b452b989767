"""A process killed (SIGKILL) in the middle of an answer: the exchange it was streaming is in the
store with the text it had so far, and reopening gives it back marked stopped, on the path, ready
to continue. A real process on the tiny random model (EOS off, so the answer runs until killed)."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from waiting import DEADLINE_S

pytestmark = pytest.mark.slow  # starts a real process

CHILD = textwrap.dedent("""
    from engine.lm.model import load_tokenizer
    from engine.lm.tiny import tiny_llama
    from engine.lm.config import SamplingConfig
    from engine.sessions.persist import PersistentChat

    lm = tiny_llama(load_tokenizer("default", convert=False), seed=0)
    chat = PersistentChat(lm, "crash", system="Be brief.",
                          sampling=SamplingConfig(max_new_tokens=1500, temperature=0.0))
    chat.send("Hello there")
    lm.eos_ids = []  # the second answer only ends when the process is killed
    print("second", flush=True)
    chat.send("Tell me everything")
""")


def _streaming_row(db_path):
    """(answer, state) of the second exchange once the recorder has written part of it."""
    if not db_path.exists():
        return None
    db = sqlite3.connect(db_path, timeout=5)
    try:
        rows = db.execute("SELECT answer, state FROM turns WHERE user='Tell me everything'").fetchall()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return rows[0] if rows and rows[0][0] else None


def test_kill_9_mid_answer_leaves_the_partial_answer_stopped(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("TOKENFORGE_SESSIONS", str(tmp_path / "sessions"))  # child and this test
    env = dict(os.environ)
    p = subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    db_path = tmp_path / "sessions" / "sessions.db"
    try:
        end = time.monotonic() + DEADLINE_S
        row = None
        while row is None or row[1] != "streaming" or len(row[0]) < 20:
            assert p.poll() is None, p.stderr.read()
            assert time.monotonic() < end, "no partial answer was written"
            row = _streaming_row(db_path)
            time.sleep(0.05)  # polling a file another process writes: no event to wait on
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=DEADLINE_S)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -signal.SIGKILL

    from engine.lm.config import SamplingConfig
    from engine.lm.tiny import tiny_llama
    from engine.sessions.persist import PersistentChat

    lm = tiny_llama(tokenizer, seed=0)
    chat = PersistentChat(lm, "crash", sampling=SamplingConfig(max_new_tokens=6, temperature=0.0))
    s = chat.session
    assert [t.user for t in s.path] == ["Hello there", "Tell me everything"]
    last = s.path[-1]
    assert last.state == "stopped" and last.answer.startswith(row[0][:20])
    assert len(last.answer_ids) > 0 and last.result.stop_reason == "stopped"
    assert last.infos and last.infos[0].id == last.answer_ids[0]  # its token facts were saved too
    assert s.nodes[0].state == "done"
    # the conversation continues from the partial answer, and the store says stopped too
    r = chat.send("Go on")
    assert r.new_tokens > 0
    saved = chat.store.get("crash")
    assert [t.state for t in saved.turns] == ["done", "stopped", "done"]
