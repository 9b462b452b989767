"""Issue 22 (Tests): a process killed with SIGKILL in the middle of an answer, then the session
reopened in the TUI from F7: the partial answer is in the transcript marked stopped, browsable
in the token explorer, and the chat continues from it, saved. A real process on the tiny model."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from textual.widgets import DataTable

from app.engines import Engine
from app.widgets.chat_messages import AssistantMessage, UserMessage
from app.widgets.composer import Composer
from app.widgets.token_explorer import TokenExplorer
from engine.lm.config import SamplingConfig

from app_fakes import until
from waiting import DEADLINE_S

pytestmark = pytest.mark.slow  # starts a real process

CHILD = textwrap.dedent("""
    from engine.lm.model import load_tokenizer
    from engine.lm.tiny import tiny_llama
    from engine.lm.config import SamplingConfig
    from engine.sessions.persist import PersistentChat

    lm = tiny_llama(load_tokenizer("default", convert=False), seed=0)
    chat = PersistentChat(lm, "crash", sampling=SamplingConfig(max_new_tokens=1500,
                                                               temperature=0.0))
    chat.send("Hello there")
    lm.eos_ids = []  # the second answer only ends when the process is killed
    chat.send("Tell me everything")
""")


def _partial(db_path):
    """The second exchange's (answer, state) once part of it is written, else None."""
    if not db_path.exists():
        return None
    db = sqlite3.connect(db_path, timeout=5)
    try:
        rows = db.execute("SELECT answer, state FROM turns WHERE user='Tell me everything'").fetchall()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return rows[0] if rows and rows[0][0] and len(rows[0][0]) >= 20 else None


async def test_kill_9_mid_answer_then_reopen_in_the_tui(make_app, tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENFORGE_SESSIONS", str(tmp_path / "sessions"))
    db_path = tmp_path / "sessions" / "sessions.db"
    p = subprocess.Popen([sys.executable, "-c", CHILD], env=dict(os.environ),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 3 * DEADLINE_S  # a loaded machine: torch's import is slow
        while _partial(db_path) is None:
            assert p.poll() is None, p.stderr.read()
            assert time.monotonic() < end, "no partial answer was written"
            time.sleep(0.05)  # polling a file another process writes: no event to wait on
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=DEADLINE_S)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -signal.SIGKILL

    app = make_app(engine=Engine(lm=tiny_lm))
    app.settings.set_sampling_by_user(SamplingConfig(max_new_tokens=4, temperature=0.0))
    async with app.run_test(size=(140, 45)) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        await pilot.press("f7")
        await until(pilot, lambda: app.current_mode == "sessions" and "crash" in app.screen.names)
        table = app.screen.query_one("#session-table", DataTable)
        table.focus()
        table.move_cursor(row=app.screen.names.index("crash"))
        await pilot.press("enter")
        await until(pilot, lambda: app.current_mode == "chat" and app.screen.session is not None
                    and len(app.screen.query(AssistantMessage)) == 2)
        chat = app.screen
        s = chat.session
        last = s.path[-1]
        assert last.state == "stopped" and len(last.answer) >= 20
        assert [str(u.content) for u in chat.query(UserMessage)] == ["Hello there",
                                                                      "Tell me everything"]
        shown = chat.query(AssistantMessage).last()
        await until(pilot, lambda: shown.text == last.answer)
        assert "stopped" in str(shown.figures.content)
        ex = chat.query_one(TokenExplorer)
        await until(pilot, lambda: ex.node == last.id and ex.current.infos)
        assert "stopped" in str(ex.query_one("#tx-head").render())
        box = chat.query_one("#prompt", Composer)
        box.focus()
        box.value = "Go on"
        await pilot.press("enter")
        await until(pilot, lambda: len(s.path) == 3 and not app.runner.busy)
        from app.saved_chat import session_store

        saved = session_store(app).get("crash")
        assert [t.state for t in saved.turns] == ["done", "stopped", "done"]
