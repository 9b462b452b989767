"""Issue 16.6: a typed (even invalid) value stays with its message beside it; Enter applies; the
"applied" line never goes stale; Apply and Re-derive are in the palette; applied settings are
saved atomically and read back at the next start. At 140×45 and 80×24."""
from __future__ import annotations

import json

import pytest
from textual.widgets import Input

from app.settings import AppSettings
from app.settings_file import load_into, settings_path

from app_fakes import until


async def _settings(pilot, app):
    await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
    await pilot.press("f6")
    await until(pilot, lambda: app.current_mode == "settings")
    return app.screen


def _text(scr, wid):
    return str(scr.query_one(wid).content)


@pytest.mark.parametrize("size", [(140, 45), (80, 24)])
async def test_typed_values_stay_and_enter_applies_and_saves(make_app, size):
    app = make_app()
    async with app.run_test(size=size) as pilot:
        scr = await _settings(pilot, app)
        chat = scr.query_one("#timeout-chat", Input)
        chat.focus()
        chat.value = "abc"  # its Input.Changed reaches the screen a few message hops later
        await until(pilot, lambda: "chat timeout" in _text(scr, "#settings-error"))
        await until(pilot, lambda: "1 unapplied" in _text(scr, "#settings-edits"))
        # a new speed figure re-derives the timeouts: the typed value is not replaced
        app.record_speed(7.0, 64)
        await pilot.pause()
        assert chat.value == "abc" and "1 unapplied" in _text(scr, "#settings-edits")
        await pilot.press("enter")  # invalid: nothing applied
        assert not settings_path().exists()
        chat.value = "123"
        temp = scr.query_one("#set-temperature", Input)
        temp.value = "0.3"
        await until(pilot, lambda: "2 unapplied" in _text(scr, "#settings-edits"))
        temp.focus()
        await pilot.press("enter")
        await until(pilot, lambda: app.settings.sampling.temperature == 0.3)
        assert app.settings.timeouts["chat"] == 123.0 and "chat" in app.settings.user_timeouts
        assert "applied and saved" in _text(scr, "#settings-edits")
        temp.value = "0.4"  # an edit after applying: the line says so (no stale "applied")
        await until(pilot, lambda: "1 unapplied edit" in _text(scr, "#settings-edits"))
        data = json.loads(settings_path().read_text(encoding="utf-8"))
        assert data["sampling"]["temperature"] == 0.3 and data["user_timeouts"] == {"chat": 123.0}
    fresh = AppSettings.from_args(None)  # the next start reads them back
    assert fresh.sampling.temperature == 0.3 and fresh.timeouts["chat"] == 123.0
    assert fresh.user_timeouts == {"chat"} and fresh.load_warning == ""


async def test_apply_and_rederive_are_in_the_palette(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        scr = await _settings(pilot, app)
        cmds = {c.title: c for c in app.get_system_commands(scr)}
        assert "settings: Apply" in cmds and "settings: Re-derive timeouts" in cmds
        app.settings.set_user_timeout("chat", 999.0)
        cmds["settings: Re-derive timeouts"].callback()
        await pilot.pause()
        assert not app.settings.user_timeouts
        assert scr.query_one("#timeout-chat", Input).value != "999"
        assert json.loads(settings_path().read_text(encoding="utf-8"))["user_timeouts"] == {}


def test_a_bad_settings_file_is_ignored_whole(tmp_path):
    p = tmp_path / "s.json"
    for bad in ("{not json", json.dumps({"version": 99}),
                json.dumps({"version": 1, "sampling": {"temperature": -4}, "export_dir": "x"}),
                json.dumps({"version": 1, "sampling": {}, "export_dir": "x",
                            "user_timeouts": {"nope": 3}})):
        p.write_text(bad, encoding="utf-8")
        s = AppSettings()
        before = (s.sampling, dict(s.timeouts), s.export_dir)
        assert "ignored" in load_into(s, p)
        assert (s.sampling, dict(s.timeouts), s.export_dir) == before


@pytest.mark.parametrize("size", [(140, 45), (80, 24)])
async def test_leaving_with_unapplied_edits_asks_apply_discard_or_stay(make_app, size):
    from app.screens.leave_settings import LeaveSettings

    app = make_app()
    async with app.run_test(size=size) as pilot:
        scr = await _settings(pilot, app)
        before = app.settings.sampling.temperature
        temp = scr.query_one("#set-temperature", Input)
        temp.focus()
        temp.value = "0.25"
        await until(pilot, lambda: "1 unapplied" in _text(scr, "#settings-edits"))
        # stay (s, then Esc): still on Settings, the typed value kept, nothing applied
        for key in ("s", "escape"):
            await pilot.press("f2")
            await until(pilot, lambda: isinstance(app.screen, LeaveSettings))
            assert "1 unapplied settings edit" in _text(app.screen, "#leave-question")
            await pilot.press("f3")  # another screen key while asking changes nothing
            assert isinstance(app.screen, LeaveSettings) and app.current_mode == "settings"
            await pilot.press(key)
            await until(pilot, lambda: app.screen is scr)
            assert app.current_mode == "settings" and temp.value == "0.25"
            assert app.settings.sampling.temperature == before
        # discard: leaves, the field shows the applied value again, nothing applied or saved
        await pilot.press("f2")
        await until(pilot, lambda: isinstance(app.screen, LeaveSettings))
        await pilot.press("d")
        await until(pilot, lambda: app.current_mode == "chat")
        assert app.settings.sampling.temperature == before and temp.value == f"{before:g}"
        assert not settings_path().exists()
        # nothing edited: leaving asks nothing
        await pilot.press("f6")
        await until(pilot, lambda: app.current_mode == "settings")
        await pilot.press("f2")
        await until(pilot, lambda: app.current_mode == "chat")
        # apply: leaves with the edit applied and saved
        await pilot.press("f6")
        await until(pilot, lambda: app.current_mode == "settings")
        temp.value = "0.35"
        await until(pilot, lambda: "1 unapplied" in _text(scr, "#settings-edits"))
        await pilot.press("f3")
        await until(pilot, lambda: isinstance(app.screen, LeaveSettings))
        await pilot.press("a")
        await until(pilot, lambda: app.current_mode == "attack")
        assert app.settings.sampling.temperature == 0.35
        assert json.loads(settings_path().read_text(encoding="utf-8"))["sampling"]["temperature"] == 0.35
        # an invalid edit cannot be applied on the way out: Settings stays, the message shows
        await pilot.press("f6")
        await until(pilot, lambda: app.current_mode == "settings")
        temp.value = "-1"
        await until(pilot, lambda: _text(scr, "#settings-error"))
        await pilot.press("f2")
        await until(pilot, lambda: isinstance(app.screen, LeaveSettings))
        await pilot.press("a")
        await until(pilot, lambda: app.screen is scr)
        assert app.current_mode == "settings" and temp.value == "-1"
        assert _text(scr, "#settings-error") and app.settings.sampling.temperature == 0.35
