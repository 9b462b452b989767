"""The TUI names the reduced-precision path: choosing "int8" in settings (real engine, tiny
model) puts INEXACT in the header, and going back to "fast" removes it."""
from __future__ import annotations

from textual.widgets import Button, Select

from app.engines import Engine

from app_fakes import until


async def test_int8_engine_path_is_labelled_in_the_header(make_app, tokenizer):
    from engine.lm.tiny import tiny_llama

    lm = tiny_llama(tokenizer, seed=2)  # its own model: the engine path is set on it
    app = make_app(engine=Engine(lm=lm))
    async with app.run_test(size=(110, 36)) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        assert "INEXACT" not in app.sub_title
        await pilot.press("f6")
        await until(pilot, lambda: app.current_mode == "settings")
        scr = app.screen
        scr.query_one("#set-engine-path", Select).value = "int8"
        scr.query_one("#apply", Button).press()
        await until(pilot, lambda: "INEXACT" in app.sub_title)
        assert lm.engine_path == "int8" and app.settings.engine_path == "int8"
        assert "int8 weight-only decode (INEXACT)" in app.sub_title
        scr.query_one("#set-engine-path", Select).value = "fast"
        scr.query_one("#apply", Button).press()
        await until(pilot, lambda: "INEXACT" not in app.sub_title)
