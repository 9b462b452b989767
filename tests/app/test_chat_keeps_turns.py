"""Issue 16.2/16.3 on screen: a refused message and a cancel during the prefill leave the
transcript as the session is (the text goes back into the box); the prefill shows tokens/total
and an ETA; turns the engine dropped to fit the context are marked. At 140×45 and 80×24."""
from __future__ import annotations

import pytest

from engine.errors import ContextOverflow

from app.widgets.chat_messages import AssistantMessage, UserMessage
from app.widgets.composer import Composer
from app.widgets.phase_progress import PhaseProgress

from app_fakes import FakeEngine, until

SIZES = [(140, 45), (80, 24)]


async def _ready(pilot, app):
    await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)


async def _send(pilot, app, text):
    box = app.screen.query_one("#prompt", Composer)
    box.focus()
    box.value = text
    await pilot.press("enter")


def _shown(scr):
    return [(type(w).__name__, getattr(w, "text", None) or str(getattr(w, "content", "")))
            for w in scr.query_one("#messages").children]


@pytest.mark.parametrize("size", SIZES)
async def test_refused_message_leaves_the_transcript(make_app, size):
    eng = FakeEngine()
    app = make_app(engine=eng)
    async with app.run_test(size=size) as pilot:
        await _ready(pilot, app)
        scr = app.screen
        await _send(pilot, app, "first")
        await until(pilot, lambda: not app.runner.busy and len(eng.sent) == 1)
        before = _shown(scr)
        eng.fail = ContextOverflow("message is 9000 tokens; exceeds the context of 8192 tokens")
        await _send(pilot, app, "a very long message")
        await until(pilot, lambda: "9000 tokens" in str(scr.query_one("#chat-error").content))
        await until(pilot, lambda: not app.runner.busy)
        assert _shown(scr) == before  # the refused turn is not on screen (nor in the session)
        assert len(scr.session.turns) == 1
        assert scr.query_one("#prompt", Composer).value == "a very long message"
        assert [e[0] for e in scr.exchanges] == list(scr.query(UserMessage))


@pytest.mark.parametrize("size", SIZES)
async def test_escape_during_prefill_gives_the_message_back(make_app, size):
    eng = FakeEngine(prefill_delay=20.0)
    app = make_app(engine=eng)
    async with app.run_test(size=size) as pilot:
        await _ready(pilot, app)
        scr = app.screen
        await _send(pilot, app, "x" * 5000)
        pp = scr.query_one("#progress", PhaseProgress)
        await until(pilot, lambda: pp.progress is not None and pp.progress.phase == "prefill")
        assert "/1,000" in pp.stats_text() and "ETA 1.0 s" in pp.stats_text()
        await pilot.press("escape")
        await until(pilot, lambda: not app.runner.busy)
        # the screen takes the turn back when it handles JobCancelled, a moment after the job ends
        await until(pilot, lambda: "not added" in str(scr.query_one("#chat-error").content))
        assert list(scr.query(UserMessage)) == [] and list(scr.query(AssistantMessage)) == []
        assert scr.query_one("#prompt", Composer).value == "x" * 5000


@pytest.mark.parametrize("size", SIZES)
async def test_dropped_turns_are_marked(make_app, size):
    eng = FakeEngine()
    real_send = eng.chat_send

    def send(*a, **kw):
        r = real_send(*a, **kw)
        r.dropped_turns = 2 if len(eng.sent) == 4 else 0
        return r

    eng.chat_send = send
    app = make_app(engine=eng)
    async with app.run_test(size=size) as pilot:
        await _ready(pilot, app)
        scr = app.screen
        for i in range(4):
            await _send(pilot, app, f"m{i}")
            await until(pilot, lambda: not app.runner.busy and len(eng.sent) == i + 1)
        users = list(scr.query(UserMessage))
        assert [u.has_class("-dropped") for u in users] == [True, True, False, False]
        assert users[0].border_title == "dropped from the model's context"
        assert [a.has_class("-dropped") for a in scr.query(AssistantMessage)] == [True, True,
                                                                                False, False]
        assert [u for u, _ in scr.exchanges] == users[2:]
