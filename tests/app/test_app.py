"""The app with a fast fake engine: screens open, a chat turn streams, stop/timeout/errors leave
the app idle and usable, invalid input keeps the buttons disabled, Ctrl+C policy."""
from __future__ import annotations

import json
import os
import signal
import threading

import pytest
from textual.widgets import Button, Input

from app.app import TokenforgeApp
from app.messages import JobCancelled, JobFailed, JobStuck, TokensGenerated
from app.screens.chat import ChatScreen
from app.widgets.chat_messages import AssistantMessage, UserMessage
from app.widgets.composer import Composer
from engine.errors import InputError, ModelNotFound

from app_fakes import DEADLINE_S, FakeEngine, until

SIZE = (110, 36)


def notes(app):
    return list(app.toasts)  # every toast shown (tests/app/conftest.py), expired or not


async def ready(pilot, app):
    await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)


async def send(pilot, app, text):
    app.screen.query_one("#prompt", Composer).focus()
    app.screen.query_one("#prompt", Composer).value = text
    await pilot.press("enter")


async def test_each_screen_opens(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        for key, mode in [("f3", "attack"), ("f4", "search"), ("f5", "dashboard"),
                          ("f6", "settings"), ("f2", "chat")]:
            await pilot.press(key)
            await until(pilot, lambda: app.current_mode == mode)
            assert app.screen.query_one("#progress") is not None  # every screen embeds it
        assert app.sub_title == "fake-lm · cpu · float32"
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for t in ("screen: Open chat", "screen: Open attack", "screen: Open search",
                  "screen: Open dashboard", "screen: Open settings", "chat: Send",
                  "chat: New conversation", "chat: Export conversation", "chat: Stop the answer",
                  "model: Reload", "jobs: Stop all running jobs", "app: Quit tokenforge"):
            assert titles.count(t) == 1, t
        assert "Quit" not in titles and "Keys" not in titles  # one entry per action
        await pilot.press("f3")
        await until(pilot, lambda: app.current_mode == "attack")
        elsewhere = [c.title for c in app.get_system_commands(app.screen)]
        assert not [t for t in elsewhere if t.startswith("chat:")]  # the attack screen's own only
        assert elsewhere.count("app: Quit tokenforge") == 1


async def test_engine_status_panel(make_app):
    """The status panel a screen shows while its engine or the model is not ready."""
    from app.screens.base import ToolScreen
    from app.widgets.engine_status import EngineStatus

    class Probe(ToolScreen):
        def compose_body(self):
            yield EngineStatus(("engine.treesearch.search", "engine.not_a_module"), "tree", "tree search",
                               id="probe-status")

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await app.push_screen(Probe())
        status = app.screen.query_one("#probe-status", EngineStatus)
        await until(pilot, lambda: "50.0 tok/s" in status.plain())
        text = status.plain()
        assert "engine.treesearch.search: importable" in text
        assert "engine.not_a_module: not in this checkout yet" in text
        assert "fake-lm" in text and "tree timeout" in text and "running: none" in text
        assert not status.engine_ready()
        # one figure of measured speed everywhere: the panel follows the running median that
        # Settings shows and the timeouts use, not the start-up probe's own result
        app.record_speed(20.0, tokens=64)
        status.refresh_status()
        assert app.settings.measured_tok_s == 35.0
        assert "decode speed: 35.0 tok/s (median of 2 runs)" in status.plain()


async def test_chat_turn_streams_into_the_list(make_app):
    eng = FakeEngine(tokens=tuple(f"t{i} " for i in range(40)), token_delay=0.005)
    app = make_app(engine=eng)
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await ready(pilot, app)
        await send(pilot, app, "hello there")
        await until(pilot, lambda: any(isinstance(m, TokensGenerated) for m in seen))
        await until(pilot, lambda: not app.runner.busy)
        scr = app.screen
        assert isinstance(scr, ChatScreen)
        await until(pilot, lambda: "40 tokens" in str(scr.query(AssistantMessage).last().figures.content))
        users = list(scr.query(UserMessage))
        answers = list(scr.query(AssistantMessage))
        assert len(users) == 1 and len(answers) == 1
        assert answers[0].text == "".join(eng.tokens)
        figures = str(answers[0].figures.content)
        assert "40 tokens" in figures and "stop: eos" in figures and "tok/s" in figures
        streamed = [m for m in seen if isinstance(m, TokensGenerated)]
        assert "".join(m.text for m in streamed) == "".join(eng.tokens)
        assert eng.sent == ["hello there"]
        assert scr.query_one("#prompt", Composer).value == ""
        assert scr.query_one("#stop", Button).disabled


async def test_escape_stops_the_answer_and_returns_to_idle(make_app):
    eng = FakeEngine(tokens=tuple("abcdefghij"), token_delay=10.0)
    app = make_app(engine=eng)
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await ready(pilot, app)
        await send(pilot, app, "long please")
        await until(pilot, lambda: app.runner.busy)
        assert not app.screen.query_one("#stop", Button).disabled
        await pilot.press("escape")
        await until(pilot, lambda: any(isinstance(m, JobCancelled) for m in seen))
        await until(pilot, lambda: not app.runner.busy)
        assert eng.cancel_seen == 1  # the engine function observed its token
        assert app.runner.in_flight() == 0
        scr = app.screen
        assert scr.query_one("#stop", Button).disabled
        assert scr.progress_widget.state == "cancelled"
        scr.query_one("#prompt", Composer).value = "again"
        await until(pilot, lambda: not scr.query_one("#send", Button).disabled)


async def test_timeout_cancels_the_job(make_app):
    eng = FakeEngine(tokens=tuple("abc"), token_delay=10.0)
    app = make_app(engine=eng)
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await ready(pilot, app)
        app.settings.set_user_timeout("chat", 0.3)  # typed: a late speed probe re-derives only the rest
        await send(pilot, app, "hi")
        await until(pilot, lambda: any(isinstance(m, JobCancelled) for m in seen))
        m = next(m for m in seen if isinstance(m, JobCancelled))
        assert m.reason == "timeout" and eng.cancel_seen == 1
        await until(pilot, lambda: app.runner.in_flight() == 0)
        await until(pilot, lambda: "timeout" in str(
            app.screen.query(AssistantMessage).last().figures.content))


async def test_engine_error_notifies_and_app_survives(make_app):
    eng = FakeEngine(fail=InputError("message is 9000 tokens; too long", hint="shorten it"))
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await send(pilot, app, "boom")
        await until(pilot, lambda: any("too long" in n for n in notes(app)))
        scr = app.screen
        await until(pilot, lambda: "too long" in str(scr.query_one("#chat-error").content))
        assert scr.query_one("#prompt", Composer).value == "boom"  # given back to fix
        eng.fail = None
        await pilot.press("enter")
        await until(pilot, lambda: len(eng.sent) == 2 and not app.runner.busy)
        assert scr.query(AssistantMessage).last().text == "".join(eng.tokens)


async def test_unexpected_exception_is_contained(make_app):
    eng = FakeEngine(fail=RuntimeError("bug in engine"))
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await send(pilot, app, "x")
        await until(pilot, lambda: any("bug in engine" in n for n in notes(app)))
        assert app.is_running and not app.runner.busy


async def test_invalid_chat_input_keeps_send_disabled(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        scr = app.screen
        prompt, sendb = scr.query_one("#prompt", Composer), scr.query_one("#send", Button)
        assert sendb.disabled  # empty
        for bad in ("   ", "\n\t", "x" * 200_001, "a\ud800b"):
            prompt.value = "fine"  # enabled in between: each bad value must disable it again
            await until(pilot, lambda: not sendb.disabled)
            prompt.value = bad
            await until(pilot, lambda: sendb.disabled)
        prompt.value = "x" * 200_001
        await until(pilot, lambda: "too long" in str(scr.query_one("#chat-error").content))
        prompt.focus()
        await pilot.press("enter")
        await pilot.pause()
        assert app.engine.sent == []  # nothing unvalidated reached the engine
        prompt.value = "fine"
        await until(pilot, lambda: not sendb.disabled)


async def test_send_disabled_until_model_ready(make_app):
    loaded = threading.Event()
    app = make_app(engine=FakeEngine(load_gate=loaded))
    async with app.run_test(size=SIZE) as pilot:
        scr = app.screen
        scr.query_one("#prompt", Composer).value = "hi"
        await until(pilot, lambda: "loading" in str(scr.query_one("#chat-status").content))
        assert app.model_state == "loading" and scr.query_one("#send", Button).disabled
        loaded.set()
        await ready(pilot, app)
        await until(pilot, lambda: not scr.query_one("#send", Button).disabled)


async def test_model_load_failure_is_shown(make_app):
    app = make_app(engine=FakeEngine(load_error=ModelNotFound("no model 'nope' here",
                                                                 hint="use 'default'")))
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.model_state == "failed")
        await until(pilot, lambda: any("no model 'nope'" in n for n in notes(app)))
        scr = app.screen
        scr.query_one("#prompt", Composer).value = "hi"
        await until(pilot, lambda: "no model" in str(scr.query_one("#chat-status").content))
        await pilot.pause()
        assert scr.query_one("#send", Button).disabled


async def test_settings_validation_disables_apply(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("f6")
        await until(pilot, lambda: app.current_mode == "settings")
        scr = app.screen
        apply = scr.query_one("#apply", Button)
        assert not apply.disabled
        for fid, bad, words in [("set-temperature", "hot", "not a number"),
                                ("set-top-p", "0", "greater than 0"),
                                ("set-max-new", "5000", "≤ 2047"),
                                ("set-seed", "-1", "≥ 0"),
                                ("timeout-chat", "abc", "not a number"),
                                ("set-device", "gpu9", "device")]:
            inp = scr.query_one(f"#{fid}", Input)
            good = inp.value
            inp.value = bad
            await until(pilot, lambda: words in str(scr.query_one("#settings-error").content))
            assert apply.disabled and scr.query_one("#reload", Button).disabled, fid
            inp.value = good
            await until(pilot, lambda: not apply.disabled)
        scr.query_one("#set-temperature", Input).value = "0"
        scr.query_one("#timeout-chat", Input).value = "45"
        apply.press()
        await until(pilot, lambda: app.settings.sampling.temperature == 0.0)
        assert app.runner.timeout_for("chat") == 45.0 and app.settings.timeouts_user_set


async def test_timeouts_derived_from_measured_speed(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await until(pilot, lambda: app.settings.measured_tok_s == 50.0)
        # 256 tokens at 50 tok/s, ×3 safety → 15.4 s, floored at 30 s; tree: ×60 → 930 s
        assert app.runner.timeout_for("chat") == 30.0
        assert app.runner.timeout_for("tree") == 930.0


async def test_export_writes_markdown_and_json(make_app, tmp_path):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await send(pilot, app, "export me")
        await until(pilot, lambda: not app.runner.busy and app.engine.sent)
        await until(pilot, lambda: app.screen.turns == 1)
        await pilot.press("ctrl+e")
        await until(pilot, lambda: bool(app.screen.last_export))
        md, js = app.screen.last_export
        assert md.parent == tmp_path / "exports"
        assert "export me" in md.read_text()
        doc = json.loads(js.read_text())  # the one export envelope (engine/export.py)
        assert doc["kind"] == "chat" and doc["model"] == "fake-lm"
        assert doc["result"]["turns"][0]["user"] == "export me"
        assert not [p for p in md.parent.iterdir() if p.suffix not in (".md", ".json")]
        assert str(md.parent) in str(app.screen.query_one("#chat-status").content)


async def test_new_conversation_and_system_prompt(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await send(pilot, app, "one")
        await until(pilot, lambda: not app.runner.busy and app.engine.sent)
        scr = app.screen
        await pilot.press("ctrl+n")
        await until(pilot, lambda: not list(scr.query(AssistantMessage)))
        scr.query_one("#system", Input).value = "Be terse."
        await pilot.click("#apply-system")
        await send(pilot, app, "two")
        await until(pilot, lambda: not app.runner.busy and len(app.engine.sent) == 2)
        s = app.engine.sessions[0]
        assert s.resets == 1 and s.system == "Be terse." and s.turns == [("two", "".join(app.engine.tokens))]


async def test_first_ctrl_c_cancels_second_forces(make_app, monkeypatch):
    forced = []
    monkeypatch.setattr(TokenforgeApp, "force_quit", lambda self, code: forced.append(code))
    eng = FakeEngine(token_delay=10.0)
    app = make_app(engine=eng)
    app.FORCE_WINDOW = 600.0  # "second press" by order, not by the clock (a loaded machine)
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await ready(pilot, app)
        await send(pilot, app, "hi")
        await until(pilot, lambda: app.runner.busy)
        await pilot.press("ctrl+c")
        await until(pilot, lambda: any(isinstance(m, JobCancelled) for m in seen))
        assert any("Ctrl+C again to force" in n for n in notes(app))
        assert app.is_running and forced == []
        await pilot.press("ctrl+c")
        assert forced == [130]


async def test_ctrl_c_when_idle_quits_gracefully(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("ctrl+c")
        await until(pilot, lambda: not app.is_running)
    assert app.return_code == 0


async def test_sigint_from_outside_cancels_jobs(make_app, monkeypatch):
    forced = []
    monkeypatch.setattr(TokenforgeApp, "force_quit", lambda self, code: forced.append(code))
    eng = FakeEngine(token_delay=10.0)
    app = make_app(engine=eng, install_signals=True)
    app.FORCE_WINDOW = 600.0  # "second press" by order, not by the clock (a loaded machine)
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await ready(pilot, app)
        await send(pilot, app, "hi")
        await until(pilot, lambda: app.runner.busy)
        os.kill(os.getpid(), signal.SIGINT)
        await until(pilot, lambda: any(isinstance(m, JobCancelled) for m in seen))
        os.kill(os.getpid(), signal.SIGINT)
        await until(pilot, lambda: forced == [130])


async def test_stuck_job_offers_force_quit(make_app):
    stuck = threading.Event()
    eng = FakeEngine(stubborn=stuck)
    app = make_app(engine=eng)
    app.runner.grace = 0.2
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await ready(pilot, app)
        app.settings.set_user_timeout("chat", 0.2)
        await send(pilot, app, "hi")
        await until(pilot, lambda: any(isinstance(m, JobStuck) for m in seen))
        await until(pilot, lambda: app.screen.progress_widget.state == "stuck"
                    and any("Ctrl+C twice" in n for n in notes(app)))
        assert app.runner.busy  # the call is still inside the engine
        stuck.set()  # the stuck call returns at last: the job ends
        await until(pilot, lambda: not app.runner.busy)


async def test_force_quit_restores_terminal_and_exits(make_app, monkeypatch):
    import app.quitting as app_mod

    calls = []

    class Exited(BaseException):
        pass

    def fake_exit(code):
        calls.append(("exit", code))
        raise Exited

    monkeypatch.setattr(app_mod, "restore_terminal", lambda a: calls.append(("restore", None)))
    monkeypatch.setattr(app_mod.os, "_exit", fake_exit)
    app = make_app()
    with pytest.raises(Exited):
        app.force_quit(130)
    assert calls == [("restore", None), ("exit", 130)]


def test_restore_terminal_fallback_without_driver():
    from app.terminal import restore_terminal

    class NoDriver:
        _driver = None

    assert restore_terminal(NoDriver()) is False  # fallback ran, nothing raised


async def test_reload_model_from_settings(make_app):
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await send(pilot, app, "first")
        await until(pilot, lambda: not app.runner.busy and app.engine.sent)
        first_lm = app.lm
        await pilot.press("f6")
        await until(pilot, lambda: app.current_mode == "settings")
        scr = app.screen
        scr.query_one("#set-model", Input).value = "other-model"
        scr.query_one("#reload", Button).press()
        await until(pilot, lambda: app.model_state == "ready" and app.lm is not first_lm
                    and not app.runner.busy)
        assert app.settings.model == "other-model"
        await pilot.press("f2")
        await until(pilot, lambda: app.current_mode == "chat")
        await send(pilot, app, "second")
        await until(pilot, lambda: not app.runner.busy and len(app.engine.sent) == 2)
        assert len(app.engine.sessions) == 2  # a new model gets a new conversation


async def test_f1_toggles_the_key_list(make_app):
    from textual.widgets import HelpPanel

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f1")
        await until(pilot, lambda: bool(app.screen.query(HelpPanel)))
        await pilot.press("f1")
        await until(pilot, lambda: not app.screen.query(HelpPanel))


async def test_user_keymap_overrides_and_bad_file(make_app, tmp_path, monkeypatch):
    from textual.widgets import HelpPanel

    km = tmp_path / "keymap.json"
    km.write_text('{"help": "f9"}')
    monkeypatch.setenv("TOKENFORGE_KEYMAP", str(km))
    app = make_app(autoload=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f9")
        await until(pilot, lambda: bool(app.screen.query(HelpPanel)))
    km.write_text('{"help": 5}')
    app = make_app(autoload=False)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: any("keymap" in n and "ignored" in n for n in notes(app)))
        await pilot.press("f1")  # the defaults stay
        await until(pilot, lambda: bool(app.screen.query(HelpPanel)))


async def test_palette_runs_a_command(make_app):
    from textual.command import CommandList, CommandPalette

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot, app)
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"screen: open settings")
        commands = app.screen.query_one(CommandList)
        await until(pilot, lambda: commands.option_count >= 1
                    and "Open settings" in str(commands.get_option_at_index(0).prompt))
        commands.highlighted = 0
        await pilot.press("enter")
        await until(pilot, lambda: app.current_mode == "settings")


class SlowProbeEngine(FakeEngine):
    """A speed probe that runs until it is cancelled (it honours its token)."""

    def measure_speed(self, lm, *, progress=None, cancel=None):
        from engine.progress import Cancelled

        if cancel.wait(DEADLINE_S):
            raise Cancelled(cancel.reason)
        return super().measure_speed(lm)


async def test_chat_preempts_the_speed_probe(make_app):
    eng = SlowProbeEngine(tokens=tuple(f"t{i}" for i in range(12)))
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and app.runner.running("speed"))
        await send(pilot, app, "hi")
        await until(pilot, lambda: len(eng.sent) == 1 and not app.runner.busy)
        # timeouts then come from the answer itself (12 tokens at 100 tok/s), once its
        # JobFinished is handled (a moment after the job is no longer busy)
        await until(pilot, lambda: app.settings.measured_tok_s == 100.0)
        assert not app.runner.running("speed") and app.speed is None


async def test_ctrl_c_with_only_background_work_quits(make_app):
    app = make_app(engine=SlowProbeEngine())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.runner.running("speed"))
        await pilot.press("ctrl+c")
        await until(pilot, lambda: not app.is_running)
    assert app.return_code == 0 and app.runner.in_flight() == 0


async def test_ctrl_c_during_model_load_cancels_the_load_and_the_app_stays(make_app):
    """A model load is the user's job: one Ctrl+C cancels it (the app says so and stays, with
    no model); only a press when idle quits."""
    app = make_app(engine=FakeEngine(load_gate=threading.Event()))  # never opened: loads forever
    app.FORCE_WINDOW = 0.0  # the second press below is a fresh one, never a force quit
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.runner.running("load"))
        await pilot.press("ctrl+c")
        await until(pilot, lambda: app.model_state == "failed")
        assert "loading cancelled" in app.model_error and app.is_running
        assert any("Cancelling" in n for n in notes(app))
        await pilot.press("ctrl+c")  # now idle: quits
        await until(pilot, lambda: not app.is_running)
    assert app.return_code == 0
