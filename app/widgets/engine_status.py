"""Engine status panel: what a screen needs before it can run, and whether it is there.

Shows the screen's engine module (importable or not, checked without importing torch), the model
and vocabulary state, this kind's timeout and its running jobs. Screens whose engine arrives later
embed it so the user sees why a run is not possible yet and what the app is doing meanwhile.
"""
from __future__ import annotations

from typing import Any

from app.inert import esc
from rich.table import Table
from textual.widgets import Static

from app.app_access import AppAccess
from app.engines import module_available

STATE_TEXT = {"ready": "[green]ready[/]", "loading": "[yellow]loading…[/]",
              "failed": "[red]failed[/]", "none": "[dim]not loaded[/]",
              "unavailable": "[dim]engine.advtok.vocab not available[/]"}


def speed_text(settings: Any) -> str:
    """The one measured decode speed (Settings, the timeouts and every screen show this figure:
    the probe's, then the running median of real answers), with where it came from."""
    tok_s = getattr(settings, "measured_tok_s", None)
    if not tok_s:
        return "[dim]not measured yet[/]"
    return f"{tok_s:.1f} tok/s ({esc(getattr(settings, 'speed_source', '') or 'speed probe')})"


class EngineStatus(AppAccess, Static):
    """A small table, refreshed on model/settings changes and by a 1 s timer."""

    DEFAULT_CSS = "EngineStatus { height: auto; padding: 0 1; }"

    def __init__(self, modules: tuple[str, ...], kind: str, what: str, **kwargs: Any) -> None:
        super().__init__("", **kwargs)
        self.modules = modules
        self.kind = kind
        self.what = what

    def on_mount(self) -> None:
        self.refresh_status()
        self.set_interval(1.0, self.refresh_status)

    def engine_ready(self) -> bool:
        return all(module_available(m) for m in self.modules)

    def rows(self) -> list[tuple[str, str]]:
        """(label, rich markup) pairs."""
        app = self.tokenforge_app
        t: list[tuple[str, str]] = []
        t.append(("capability", self.what))
        for m in self.modules:
            ok = module_available(m)
            t.append(("engine", f"{m}: " + ("[green]importable[/]" if ok else
                                            "[yellow]not in this checkout yet[/]")))
        model = STATE_TEXT.get(app.model_state, app.model_state)
        if app.lm is not None:
            model += f" · {esc(app.lm.describe())} · context {app.lm.context_length:,}"
        elif app.model_error:
            model += f" · {esc(app.model_error)}"
        t.append(("model", model))
        t.append(("vocabulary", STATE_TEXT.get(app.vocab_state, app.vocab_state)))
        t.append(("decode speed", speed_text(app.settings)))
        timeout = app.runner.timeout_for(self.kind)
        t.append((f"{self.kind} timeout", "none" if timeout is None else f"{timeout:.0f} s (Settings, F6)"))
        jobs = app.runner.running(self.kind)
        t.append(("running", ", ".join(f"#{j.id} {j.elapsed:.0f} s" for j in jobs) if jobs else "none"))
        return t

    def plain(self) -> str:
        from rich.text import Text

        return "\n".join(f"{k}: {Text.from_markup(v).plain}" for k, v in self.rows())

    def table(self) -> Table:
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold")
        t.add_column()
        for k, v in self.rows():
            t.add_row(k, v)
        return t

    def refresh_status(self) -> None:
        self.update(self.table())
