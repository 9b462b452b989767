"""Issue 22, item 1 on screen with the real engine and store: Esc during the prefill of a long
paste (and of an edited message) leaves every saved row as it was — the answer before it keeps
its figures; F7's Markdown export after a restart says nothing of the discarded message."""
from __future__ import annotations

import sqlite3
import time

from textual.widgets import DataTable

from app.engines import Engine
from app.messages import JobCancelled, JobFinished
from app.widgets.composer import Composer
from engine.lm.config import SamplingConfig

from app_fakes import until
from waiting import DEADLINE_S


def _rows(path):
    db = sqlite3.connect(path)
    try:
        return {t: db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                for t in ("sessions", "branches", "turns")}
    finally:
        db.close()


def _hold_in_prefill(engine, name):
    """The engine's ``name`` call (chat_send, chat_edit…) waits inside its prefill until the
    job is cancelled (Esc): a prefill the test can land in however fast the machine is."""
    real = getattr(engine, name)

    def held(*a, progress=None, cancel=None, **kw):
        def hold(p):
            if progress is not None:
                progress(p)
            if p.phase == "prefill" and cancel is not None:
                end = time.monotonic() + DEADLINE_S
                while not cancel.cancelled and time.monotonic() < end:
                    cancel.wait(0.05)
        return real(*a, progress=hold, cancel=cancel, **kw)

    setattr(engine, name, held)
    return real


async def _first_answer(pilot, app, seen):
    """Send one message and wait for its answer to be saved: (chat screen, store, session name)."""
    from app.saved_chat import session_store

    await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
    scr = app.screen
    box = scr.query_one("#prompt", Composer)
    box.focus()
    box.value = "Hello there"
    await pilot.press("enter")
    await until(pilot, lambda: any(isinstance(m, JobFinished) and m.kind == "chat"
                                   for m in seen) and not app.runner.busy)
    return scr, session_store(app), scr.saved.name


async def test_esc_in_a_long_prefill_leaves_every_saved_row(make_app, tiny_lm):
    eng = Engine(lm=tiny_lm)
    app = make_app(engine=eng)
    app.settings.set_sampling_by_user(SamplingConfig(max_new_tokens=6, temperature=0.0))
    seen = []
    async with app.run_test(size=(140, 45), message_hook=seen.append) as pilot:
        scr, store, name = await _first_answer(pilot, app, seen)
        await until(pilot, lambda: store.get(name).turns and
                    store.get(name).turns[-1].metrics.get("new_tokens"))
        before = _rows(store.path)
        figures = dict(store.get(name).turns[-1].metrics)
        assert figures.get("stop_reason") != "cancelled"

        real = _hold_in_prefill(eng, "chat_send")
        box = scr.query_one("#prompt", Composer)
        box.focus()
        box.value = "word " * 300
        await pilot.press("enter")
        await until(pilot, lambda: app.runner.busy and scr.query_one("#progress").progress
                    is not None and scr.query_one("#progress").progress.phase == "prefill")
        await pilot.press("escape")
        await until(pilot, lambda: any(isinstance(m, JobCancelled) for m in seen)
                    and not app.runner.busy)
        await until(pilot, lambda: "not added" in str(scr.query_one("#chat-error").content))
        eng.chat_send = real
        assert _rows(store.path) == before  # not a row, not a figure changed
        assert store.get(name).turns[-1].metrics == figures
        app.exit()

    app = make_app(engine=Engine(lm=tiny_lm))  # after a restart: F7 export
    async with app.run_test(size=(140, 45)) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        await pilot.press("f7")
        await until(pilot, lambda: app.current_mode == "sessions" and name in app.screen.names)
        table = app.screen.query_one("#session-table", DataTable)
        table.focus()
        table.move_cursor(row=app.screen.names.index(name))
        await pilot.press("e")
        await until(pilot, lambda: getattr(app.screen, "last_export", None) is not None)
        md = app.screen.last_export.read_text(encoding="utf-8")
        assert "word word" not in md and "cancelled" not in md
        assert md.count("**Assistant:**") == 1


def _hold_after_tokens(engine, name, n):
    """The engine's ``name`` call waits after its ``n``-th streamed token until the job is
    cancelled (Esc): the answer is stopped mid-stream however fast the machine is."""
    real = getattr(engine, name)

    def held(*a, on_token=None, cancel=None, **kw):
        count = [0]

        def tok(*ta, **tk):
            if on_token is not None:
                on_token(*ta, **tk)
            count[0] += 1
            if count[0] == n and cancel is not None:
                end = time.monotonic() + DEADLINE_S
                while not cancel.cancelled and time.monotonic() < end:
                    cancel.wait(0.05)
        return real(*a, on_token=tok, cancel=cancel, **kw)

    setattr(engine, name, held)
    return real


async def test_esc_in_a_regenerate_keeps_the_partial_variant_and_the_first_answer(make_app, tiny_lm):
    """Issue 22.2: a regenerate streams like an answer and Esc stops it like one: the partial
    text stays as a variant marked stopped (saved so), the first answer's row is untouched."""
    from app.widgets.chat_messages import AssistantMessage

    eng = Engine(lm=tiny_lm)
    app = make_app(engine=eng)
    app.settings.set_sampling_by_user(SamplingConfig(max_new_tokens=12, temperature=0.0))
    seen = []
    async with app.run_test(size=(140, 45), message_hook=seen.append) as pilot:
        scr, store, name = await _first_answer(pilot, app, seen)
        first = store.nodes(name)[0]
        app.settings.set_sampling_by_user(SamplingConfig(max_new_tokens=12, temperature=1.5, seed=3))
        _hold_after_tokens(eng, "chat_regenerate", 3)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: app.runner.busy and len(scr.session.nodes) == 2
                    and len(scr.session.nodes[1].answer_ids) >= 3)
        await pilot.press("escape")
        await until(pilot, lambda: not app.runner.busy and not scr.busy)
        regen = scr.session.nodes[1]
        assert regen.how == "regenerate" and regen.state == "stopped" and regen.answer
        assert [t.id for t in scr.session.path] == [regen.id]
        last = scr.query(AssistantMessage).last()
        await until(pilot, lambda: last.text == regen.answer and "stop" in str(last.figures.content))
        saved = {n.key: n for n in store.nodes(name)}
        assert saved[first.key].answer == first.answer
        assert saved[first.key].metrics == first.metrics  # the first answer's figures untouched
        assert [(n.how, n.state, n.answer) for n in store.nodes(name)][1] == \
            ("regenerate", "stopped", regen.answer)
