"""The chat composer (multi-line message box) and regenerate (ctrl+r), with the fake engine and
once with the real engine on the tiny model."""
from __future__ import annotations

from textual.widgets import Button

from app.engines import Engine
from app.messages import JobFinished
from app.widgets.chat_messages import AssistantMessage, UserMessage
from app.widgets.composer import Composer
from engine.lm.config import SamplingConfig

from app_fakes import FakeEngine, until

SIZE = (110, 36)


async def ready(pilot, app):
    await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)


def notes(app):
    return list(app.toasts)  # every toast shown (tests/app/conftest.py), expired or not


async def test_enter_sends_and_newline_keys_insert_lines(make_app):
    eng = FakeEngine()
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        box = app.screen.query_one("#prompt", Composer)
        assert app.focused is box
        await pilot.press(*"one", "ctrl+j", *"two", "shift+enter", *"three", "alt+enter", "x")
        assert box.text == "one\ntwo\nthree\nx" and eng.sent == []
        await pilot.press("enter")
        await until(pilot, lambda: not app.runner.busy and len(eng.sent) == 1)
        assert eng.sent == ["one\ntwo\nthree\nx"]
        assert box.text == "" and app.focused is box
        shown = app.screen.query(UserMessage).last()
        assert str(shown.content) == "one\ntwo\nthree\nx"
        assert shown.size.height >= 4  # the lines are kept in the list


async def test_whitespace_refused_inline_and_send_disabled(make_app):
    eng = FakeEngine()
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        scr = app.screen
        sendb = scr.query_one("#send", Button)
        assert sendb.disabled
        await pilot.press("space", "ctrl+j", "tab")  # tab leaves the box (focus behaviour)
        scr.query_one("#prompt", Composer).focus()
        await pilot.press("space", "enter")
        await until(pilot, lambda: "empty" in str(scr.query_one("#chat-error").content).lower())
        assert eng.sent == [] and sendb.disabled
        await pilot.press("h", "i")
        await until(pilot, lambda: not sendb.disabled)
        assert str(scr.query_one("#chat-error").content) == ""


async def test_composer_grows_then_scrolls(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        box = app.screen.query_one("#prompt", Composer)
        assert box.size.height == 1  # one text line inside the border
        box.value = "a\nb\nc"
        await until(pilot, lambda: box.size.height == 3)
        assert box.max_scroll_y == 0
        box.value = "\n".join(str(i) for i in range(20))
        await until(pilot, lambda: box.outer_size.height == 8)  # max-height: 6 lines + border
        await until(pilot, lambda: box.scroll_y == box.max_scroll_y > 0)
        assert box.max_scroll_y == 20 - box.size.height
        assert box.cursor_location == (19, 2)  # end of text, scrolled into view
        assert box.scroll_y == box.max_scroll_y


async def test_regenerate_replaces_the_last_answer(make_app):
    eng = FakeEngine(tokens=("first", " answer"))
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        scr = app.screen
        await pilot.press("ctrl+r")
        await until(pilot, lambda: any("Nothing to regenerate" in n for n in notes(app)))
        assert eng.regenerated == []
        scr.query_one("#prompt", Composer).value = "question\nwith two lines"
        await pilot.press("enter")
        await until(pilot, lambda: not app.runner.busy and scr.query(AssistantMessage)
                    and scr.query(AssistantMessage).last().text == "first answer")
        eng.tokens = ("second", " try")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: not app.runner.busy and eng.regenerated)
        await until(pilot, lambda: "regenerated" in str(
            scr.query(AssistantMessage).last().figures.content))
        answers = list(scr.query(AssistantMessage))
        assert [a.text for a in answers] == ["second try"]
        assert len(scr.query(UserMessage)) == 1
        assert eng.regenerated == ["question\nwith two lines"]
        assert eng.sessions[0].turns == [("question\nwith two lines", "second try")]
        # while an answer runs, ctrl+r is refused
        eng.token_delay, eng.tokens = 10.0, ("slow",)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: app.runner.busy)
        await pilot.press("ctrl+r")
        assert any("Esc to stop it first" in n for n in notes(app))
        await pilot.press("escape")
        await until(pilot, lambda: not app.runner.busy)


async def test_regenerate_refused_after_a_failed_turn(make_app):
    from engine.errors import InputError

    eng = FakeEngine()
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        scr = app.screen
        scr.query_one("#prompt", Composer).value = "ok"
        await pilot.press("enter")
        await until(pilot, lambda: not app.runner.busy and len(eng.sent) == 1)
        eng.fail = InputError("too long")
        scr.query_one("#prompt", Composer).value = "bad"
        await pilot.press("enter")
        await until(pilot, lambda: not app.runner.busy and len(eng.sent) == 2)
        await until(pilot, lambda: "too long" in str(scr.query_one("#chat-error").content))
        await pilot.press("ctrl+r")  # would answer "ok" again under the "bad" message: refused
        await until(pilot, lambda: any("Nothing to regenerate" in n for n in notes(app)))
        assert eng.regenerated == []


async def test_regenerate_with_the_tiny_model_is_deterministic_when_greedy(make_app, tiny_lm):
    app = make_app(engine=Engine(lm=tiny_lm))
    app.settings.set_sampling_by_user(SamplingConfig(max_new_tokens=12, temperature=0.0))  # the user's: model defaults leave it
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        scr = app.screen
        scr.query_one("#prompt", Composer).value = "Hi\nthere"
        await pilot.press("enter")
        await until(pilot, lambda: sum(isinstance(m, JobFinished) and m.kind == "chat"
                                       for m in seen) == 1, 30)
        first = next(m.result for m in seen if isinstance(m, JobFinished) and m.kind == "chat")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: sum(isinstance(m, JobFinished) and m.kind == "chat"
                                       for m in seen) == 2, 30)
        again = [m.result for m in seen if isinstance(m, JobFinished) and m.kind == "chat"][-1]
        assert again.token_ids == first.token_ids
        assert len(scr.session.turns) == 1 and scr.session.turns[0].user == "Hi\nthere"
        await until(pilot, lambda: len(scr.query(AssistantMessage)) == 1
                    and scr.query(AssistantMessage).last().text == again.text)
