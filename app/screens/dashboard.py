"""Dashboard screen: runs engine.bench through the runner (job kind "bench").

The owning engineer fills the form and result widgets in compose_body (keep the
EngineStatus panel: it tells the user when the engine or the model is not ready) and starts runs
with self.start_job("bench", fn, ...) — see app/runner.py for the API and messages.
"""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical

from app.screens.base import ToolScreen
from app.widgets.engine_status import EngineStatus

ENGINE_MODULES = ("engine.bench",)
JOB_KIND = "bench"
WHAT = "Method dashboard — methods × suite grid, aggregate table, terminal plots, PNG/CSV export"


class DashboardScreen(ToolScreen):
    """Dashboard screen (shows the engine status until its engine lands)."""

    def __init__(self) -> None:
        super().__init__(id="dashboard-screen")

    def compose_body(self) -> ComposeResult:
        with Vertical(id="dashboard-main", classes="tool-main"):
            yield EngineStatus(ENGINE_MODULES, JOB_KIND, WHAT, id="dashboard-status")

    def model_changed(self) -> None:
        if self.is_mounted:
            self.query_one(EngineStatus).refresh_status()

    def settings_changed(self) -> None:
        self.model_changed()
