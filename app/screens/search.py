"""Tree-search screen: runs engine.treesearch through the runner (job kind "tree").

The owning engineer fills the form and result widgets in compose_body (keep the
EngineStatus panel: it tells the user when the engine or the model is not ready) and starts runs
with self.start_job("tree", fn, ...) — see app/runner.py for the API and messages.
"""
from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical

from app.screens.base import ToolScreen
from app.widgets.engine_status import EngineStatus

ENGINE_MODULES = ("engine.treesearch",)
JOB_KIND = "tree"
WHAT = "Tree search over tokens with a reward spec (rollouts, horizon, λ; root children, best vs greedy answer)"


class SearchScreen(ToolScreen):
    """Tree-search screen (shows the engine status until its engine lands)."""

    def __init__(self) -> None:
        super().__init__(id="search-screen")

    def compose_body(self) -> ComposeResult:
        with Vertical(id="search-main", classes="tool-main"):
            yield EngineStatus(ENGINE_MODULES, JOB_KIND, WHAT, id="search-status")

    def model_changed(self) -> None:
        if self.is_mounted:
            self.query_one(EngineStatus).refresh_status()

    def settings_changed(self) -> None:
        self.model_changed()
