"""The sessions screen with the real engine on the tiny model: chats are saved as they go; the
screen lists them, searches across them, renames, deletes (twice) and opens one into chat, whose
next turn then prefills only its new tokens (KV snapshot)."""
from __future__ import annotations

import pytest
from textual.widgets import DataTable, Input

from app.engines import Engine
from app.messages import JobFinished
from engine.lm.config import SamplingConfig
from app.widgets.chat_messages import AssistantMessage, UserMessage
from app.widgets.composer import Composer

from app_fakes import until


async def _say(pilot, app, seen, text):
    n = sum(isinstance(m, JobFinished) and m.kind == "chat" for m in seen)
    prompt = app.screen.query_one("#prompt", Composer)
    prompt.focus()
    prompt.value = text
    await pilot.press("enter")
    await until(pilot, lambda: sum(isinstance(m, JobFinished) and m.kind == "chat" for m in seen) > n
                and not app.runner.busy, 30)
    return [m for m in seen if isinstance(m, JobFinished) and m.kind == "chat"][-1].result


async def test_sessions_screen(make_app, tiny_lm):
    app = make_app(engine=Engine(lm=tiny_lm))
    app.settings.set_sampling_by_user(SamplingConfig(max_new_tokens=6, temperature=0.0))  # the user's: model defaults leave it
    seen = []
    async with app.run_test(size=(120, 36), message_hook=seen.append) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        await _say(pilot, app, seen, "Tell me about kittens")
        await _say(pilot, app, seen, "And more")
        await pilot.press("ctrl+n")  # a second conversation: a second saved session
        await _say(pilot, app, seen, "Weather on the moon")

        await pilot.press("f7")
        await until(pilot, lambda: app.current_mode == "sessions")
        scr = app.screen
        table = scr.query_one("#session-table", DataTable)
        await until(pilot, lambda: table.row_count == 2)
        assert scr.names == ["Weather on the moon", "Tell me about kittens"]  # newest first

        # search across sessions
        await pilot.press("slash")
        await pilot.press(*"KITTEN")
        await until(pilot, lambda: scr.names == ["Tell me about kittens"])
        assert "match" in str(table.get_row_at(0)[4])
        scr.query_one("#session-search", Input).value = ""
        await until(pilot, lambda: table.row_count == 2)

        # rename the selected one (the newest)
        table.focus()
        table.move_cursor(row=0)
        await pilot.press("r")
        inp = scr.query_one("#session-rename", Input)
        assert inp.has_focus and inp.value == "Weather on the moon"
        inp.value = ""
        await pilot.press(*"moon", "enter")
        await until(pilot, lambda: "moon" in scr.names)
        assert app.screen is scr and not scr.query_one("#rename-row").display

        # the chat had it open: it goes on saving into it under the new name (its writer lock
        # moved with it), and no one else may take the new name meanwhile
        from app.saved_chat import session_store
        from engine.locks import LockHeld
        from engine.sessions.writer_lock import session_lock

        store = session_store(app)
        with pytest.raises(LockHeld):
            session_lock(store.path, "moon").acquire()
        session_lock(store.path, "Weather on the moon").acquire().release()
        await pilot.press("f2")
        await until(pilot, lambda: app.current_mode == "chat")
        await _say(pilot, app, seen, "And Mars?")
        assert [t.user for t in store.get("moon").turns] == ["Weather on the moon", "And Mars?"]
        await pilot.press("f7")
        await until(pilot, lambda: app.current_mode == "sessions")

        # delete needs a second press, and is refused while the chat has the session open
        table.focus()
        table.move_cursor(row=scr.names.index("moon"))
        await pilot.press("d")
        assert "press d again" in str(scr.query_one("#sessions-status").content)
        assert table.row_count == 2
        await pilot.press("d")
        assert "open in the chat" in str(scr.query_one("#sessions-status").content)
        assert sorted(scr.names) == ["Tell me about kittens", "moon"] and store.exists("moon")
        await pilot.press("f2")  # a new chat lets it go; then it can be deleted
        await until(pilot, lambda: app.current_mode == "chat")
        await pilot.press("ctrl+n")
        await pilot.press("f7")
        await until(pilot, lambda: app.current_mode == "sessions")
        table.focus()
        table.move_cursor(row=scr.names.index("moon"))
        await pilot.press("d", "d")
        await until(pilot, lambda: scr.names == ["Tell me about kittens"])

        # Markdown export of a saved session, without opening it
        table.move_cursor(row=0)
        await pilot.press("e")
        md = scr.last_export.read_text(encoding="utf-8")
        assert md.startswith("# Tell me about kittens") and "**User:** And more" in md
        assert md.count("**Assistant:**") == 2

        # open the remaining one into chat; it continues with only new tokens prefilled
        table.move_cursor(row=0)
        await pilot.press("enter")
        await until(pilot, lambda: app.current_mode == "chat")
        chat = app.screen
        try:
            await until(pilot, lambda: len(chat.query(UserMessage)) == 2
                        and "restored from snapshot" in str(chat.query_one("#chat-status").content))
        except AssertionError:
            raise AssertionError((len(chat.query(UserMessage)), str(chat.query_one("#chat-status").content),
                                  str(scr.query_one("#sessions-status").content)))
        assert [str(u.content) for u in chat.query(UserMessage)] == ["Tell me about kittens", "And more"]
        assert all(a.text for a in chat.query(AssistantMessage))
        before = len(chat.session.ids)
        r = await _say(pilot, app, seen, "Third")
        assert r.prefill_tokens == 1 + (len(chat.session.ids) - before - r.new_tokens)
        assert r.prefill_tokens < before / 2
        from app.saved_chat import session_store

        saved = session_store(app).get("Tell me about kittens")
        assert [t.user for t in saved.turns] == ["Tell me about kittens", "And more", "Third"]


async def test_full_disk_is_shown_and_the_app_keeps_running(make_app, tiny_lm, monkeypatch):
    """sqlite's "database or disk is full" while the app opens the sessions database: the answer
    stays on screen with "not saved: … disk is full", the F7 screen shows the same one message,
    the healthy database is neither moved aside nor changed, and once the disk has room the next
    turn is saved beside the earlier session."""
    import sqlite3

    import engine.sessions.store as store_mod
    from engine.sessions.store import SessionStore, sessions_dir

    path = sessions_dir() / "sessions.db"
    st = SessionStore(path)
    st.create("earlier", "m", "h", None, {})
    st.close()
    before = path.read_bytes()
    real = sqlite3.connect

    class Full:
        def __init__(self, db):
            self.db = db

        def execute(self, sql, *a):
            if "sqlite_master" in sql:
                raise sqlite3.OperationalError("database or disk is full")
            return self.db.execute(sql, *a)

        def __getattr__(self, name):
            return getattr(self.db, name)

    monkeypatch.setattr(store_mod.sqlite3, "connect", lambda *a, **kw: Full(real(*a, **kw)))
    from app.app import TokenforgeApp

    said: list[str] = []
    real_notify = TokenforgeApp.notify
    monkeypatch.setattr(TokenforgeApp, "notify",
                        lambda self, message, *a, **k: said.append(str(message)) or real_notify(self, message, *a, **k))
    app = make_app(engine=Engine(lm=tiny_lm))
    app.settings.set_sampling_by_user(SamplingConfig(max_new_tokens=4, temperature=0.0))  # the user's: model defaults leave it
    seen = []
    async with app.run_test(size=(120, 36), message_hook=seen.append) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        r = await _say(pilot, app, seen, "Tell me about kittens")
        assert r.text and any("not saved" in n and "disk is full" in n for n in r.notes)
        await until(pilot, lambda: any("not saved" in t and "disk is full" in t for t in said))
        await pilot.press("f7")
        await until(pilot, lambda: app.current_mode == "sessions")
        await until(pilot, lambda: "disk is full" in str(app.screen.query_one("#sessions-status").render()))
        assert path.read_bytes() == before and not [p for p in path.parent.iterdir() if ".bad-" in p.name]
        monkeypatch.setattr(store_mod.sqlite3, "connect", real)  # space freed
        await pilot.press("f2")
        await until(pilot, lambda: app.current_mode == "chat")
        r = await _say(pilot, app, seen, "And more")
        assert not any("not saved" in n for n in r.notes)
        await pilot.press("f7")
        await until(pilot, lambda: app.current_mode == "sessions")
        await until(pilot, lambda: "earlier" in app.screen.names and len(app.screen.names) == 2)
        assert app.is_running
