"""Pilot steps shared by the dashboard (F5) tests: open the screen once the model is settled,
and read its Run button and error line."""
from __future__ import annotations

from textual.widgets import Button

from app_fakes import until


async def open_dashboard(pilot, app):
    await until(pilot, lambda: app.model_state in ("ready", "failed") and not app.runner.busy)
    await pilot.press("f5")
    await until(pilot, lambda: app.current_mode == "dashboard")
    await pilot.pause()
    return app.screen


def run_button(scr) -> Button:
    return scr.query_one("#dash-run", Button)


def error_text(scr) -> str:
    return str(scr.query_one("#dash-error").content)
