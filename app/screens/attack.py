"""AdvTok attack screen: runs engine.advtok through the runner (job kind "advtok").

The owning engineer fills the form and result widgets in compose_body (keep the
EngineStatus panel: it tells the user when the engine or the model is not ready) and starts runs
with self.start_job("advtok", fn, ...) — see app/runner.py for the API and messages.
"""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical

from app.screens.base import ToolScreen
from app.widgets.engine_status import EngineStatus

ENGINE_MODULES = ("engine.advtok",)
JOB_KIND = "advtok"
WHAT = "AdvTok — adversarial tokenization of a request (canonical vs adversarial tokens, scores, samples side by side)"


class AttackScreen(ToolScreen):
    """AdvTok attack screen (shows the engine status until its engine lands)."""

    def __init__(self) -> None:
        super().__init__(id="attack-screen")

    def compose_body(self) -> ComposeResult:
        with Vertical(id="attack-main", classes="tool-main"):
            yield EngineStatus(ENGINE_MODULES, JOB_KIND, WHAT, id="attack-status")

    def model_changed(self) -> None:
        if self.is_mounted:
            self.query_one(EngineStatus).refresh_status()

    def settings_changed(self) -> None:
        self.model_changed()
