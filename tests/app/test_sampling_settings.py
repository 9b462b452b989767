"""Settings' min-p and banned-ids fields: a typed value is checked against SamplingConfig's
declared bound, Enter applies it to the sampling config every chat turn uses, it is saved and
read back at the next start; a bad value keeps Apply disabled with one message and changes
nothing."""
from __future__ import annotations

import json

from textual.widgets import Button, Input

from app.settings import AppSettings
from app.settings_file import settings_path

from app_fakes import until


async def test_min_p_and_banned_ids_reach_the_sampling_config(make_app):
    app = make_app()
    async with app.run_test(size=(140, 45)) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        await pilot.press("f6")
        await until(pilot, lambda: app.current_mode == "settings")
        scr = app.screen
        min_p, banned = scr.query_one("#set-min-p", Input), scr.query_one("#set-banned", Input)
        err = scr.query_one("#settings-error")
        for field, text, words in ((min_p, "1.5", "min-p"), (banned, "5,-2", "banned ids: item 2"),
                                   (banned, "5,x", "whole number")):
            field.value = text
            await until(pilot, lambda: words in str(err.content))
            assert scr.query_one("#apply", Button).disabled
            field.focus()
            await pilot.press("enter")  # refused: nothing applied
            assert app.settings.sampling.min_p == 0.0 and app.settings.sampling.banned_ids == ()
            field.value = {min_p: "0", banned: ""}[field]
        min_p.value = "0.05"
        banned.value = "5, 17,2"
        await until(pilot, lambda: str(err.content) == "")
        banned.focus()
        await pilot.press("enter")
        await until(pilot, lambda: app.settings.sampling.banned_ids == (5, 17, 2))
        assert app.settings.sampling.min_p == 0.05
        saved = json.loads(settings_path().read_text(encoding="utf-8"))["sampling"]
        assert saved["min_p"] == 0.05 and saved["banned_ids"] == [5, 17, 2]
    fresh = AppSettings.from_args(None)  # the next start reads them back
    assert fresh.sampling.min_p == 0.05 and fresh.sampling.banned_ids == (5, 17, 2)
    assert fresh.load_warning == ""
