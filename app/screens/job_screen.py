"""The job screens' shared life cycle (attack, tree search): form → validate → run through the
runner → live progress → result → export.

A subclass composes its form and result widgets using ids ``<PREFIX>-run``, ``-stop``,
``-export`` (buttons), ``-error`` (the inline message), ``-status`` and ``-summary`` (Static), and
supplies:

* ``form()`` → (fields, first error or None), from the inputs (app/validate.py parsers);
* ``prepare(fields, **extra)`` → a ``Launch`` (engine call, its arguments, the job's params, and
  the settings recorded in the export), after clearing the last result from view;
* ``show_result(result, note)`` and ``status_detail()`` (the model part of the status line);
  optionally ``refresh_form()`` (extra per-field marks) and ``cancelled_text(m)``.

Everything else is here once: Run/Stop/Export enabling, the status line, input and button
events, palette entries, the job hooks (finished, cancelled with the engine's partial result,
failed), and the export — one JSON envelope for every job (engine/export.py)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Optional

from app.inert import notice, tesc
from textual.app import SystemCommand
from textual.widgets import Button, Checkbox, Input, Select, Static

from app.engines import module_available
from app.messages import JobCancelled, JobFailed, JobFinished, JobStarted
from app.screens.base import ToolScreen
from app.widgets.engine_status import EngineStatus


@dataclass
class Launch:
    """What ``prepare`` hands back: the engine call and what to record about it."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    params: dict[str, Any]                                    # the runner's log line for the job
    settings: dict[str, Any] = field(default_factory=dict)    # the export's "settings"
    running: str = "running…"                                 # the summary line while it runs


class JobScreen(ToolScreen):
    """Base of the attack and tree-search screens (one job at a time, one result kept)."""

    JOB_KIND: ClassVar[str] = ""
    PREFIX: ClassVar[str] = ""             # widget id prefix, e.g. "atk"
    NOUN: ClassVar[str] = ""               # "attack", "tree search" (messages, palette)
    PALETTE: ClassVar[str] = ""            # palette group, e.g. "attack"
    EXPORT_STEM: ClassVar[str] = ""        # export file names: <stem>-<time>.json
    ENGINE_MODULES: ClassVar[tuple[str, ...]] = ()
    ENGINE_METHOD: ClassVar[str] = ""      # the app.engine method the job calls
    ENGINE_MISSING: ClassVar[str] = ""     # said when the engine part is not in this checkout

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.result: Any = None
        self.result_state = ""             # finished / cancelled
        self.last_export: Optional[Path] = None
        self.engine_error = ""
        self.run_settings: dict[str, Any] = {}
        self.started_at: Optional[float] = None
        self.finished_at: Optional[float] = None

    # -- subclass parts -----------------------------------------------------------------------
    def form(self) -> tuple[dict[str, Any], Optional[str]]:
        raise NotImplementedError

    def prepare(self, fields: dict[str, Any], **extra: Any) -> Optional[Launch]:
        raise NotImplementedError

    def show_result(self, result: Any, note: str = "") -> None:
        raise NotImplementedError

    def status_detail(self) -> str:
        """The model part of the status line (markup, already escaped)."""
        return ""

    def refresh_form(self) -> None:
        """Per-screen marks beside the shared controls (e.g. a warning line)."""

    def cancelled_text(self, m: JobCancelled) -> str:
        """The note above a partial result kept after a stop."""
        return f"stopped ({m.reason}) — best found so far"

    def nothing_kept_text(self, m: JobCancelled) -> str:
        return f"stopped ({m.reason}) before any result"

    # -- helpers ------------------------------------------------------------------------------
    def _w(self, suffix: str, kind: type = Static) -> Any:
        return self.query_one(f"#{self.PREFIX}-{suffix}", kind)

    def say(self, markup: str) -> None:
        self._w("summary").update(markup)

    def context_length(self) -> int:
        """The loaded model's context (8192 before one is loaded; forms bound lengths by it)."""
        try:
            lm = self.loaded_model
        except Exception:  # noqa: BLE001 — validated before the screen is attached
            lm = None
        return int(getattr(lm, "context_length", 0) or 8192)

    def engine_ready(self) -> Optional[str]:
        """Why a run cannot start now, apart from the form (None: it can)."""
        app = self.tokenforge_app
        if (not all(module_available(m) for m in self.ENGINE_MODULES)
                or not hasattr(app.engine, self.ENGINE_METHOD)):
            return self.ENGINE_MISSING
        if app.model_state == "loading":
            return "loading the model… Run opens when it is ready"
        if app.model_state == "failed" or app.lm is None:
            return f"no model: {app.model_error or 'not loaded'} — open Settings (F6)"
        return None

    # -- state → controls ---------------------------------------------------------------------
    def model_changed(self) -> None:
        if self.is_mounted:
            self.query_one(EngineStatus).refresh_status()
            self.refresh_controls()

    def settings_changed(self) -> None:
        self.model_changed()

    def timeout_text(self) -> str:
        t = self.tokenforge_app.runner.timeout_for(self.JOB_KIND)
        return "none" if t is None else f"{t:.0f} s"

    def _status_text(self) -> str:
        why = self.engine_ready()
        if why:
            return f"[yellow]{tesc(why)}[/]"
        app = self.tokenforge_app
        out = (f"[dim]{self.status_detail()} · timeout {self.timeout_text()} · exports → "
               f"{tesc(str(app.settings.export_dir))}[/]")
        if self.last_export is not None:
            out += f"\nexported → {tesc(str(self.last_export))}"
        return out

    def refresh_controls(self) -> None:
        if not self.is_mounted:
            return
        _, err = self.form()
        blocked = self.engine_ready()
        self._w("run", Button).disabled = bool(err or blocked) or self.busy
        self._w("stop", Button).disabled = not self.busy
        self._w("export", Button).disabled = self.result is None or self.busy
        self._w("error").update(tesc(err or self.engine_error))
        self.refresh_form()
        self._w("status").update(self._status_text())

    def on_input_changed(self, event: Input.Changed) -> None:
        self.engine_error = ""
        self.refresh_controls()

    def on_select_changed(self, event: Select.Changed) -> None:
        self.refresh_controls()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        self.refresh_controls()

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_run()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        action = {f"{self.PREFIX}-run": self.action_run, f"{self.PREFIX}-stop": self.action_stop,
                  f"{self.PREFIX}-export": self.action_export}.get(event.button.id or "")
        if action is not None:
            action()

    def palette_commands(self) -> Iterable[SystemCommand]:
        noun, group = self.NOUN, self.PALETTE
        yield SystemCommand(f"{group}: Run {noun}", "Start with the form's settings (ctrl+r)",
                            self.action_run)
        yield SystemCommand(f"{group}: Stop {noun}",
                            "Stop the running job; the best so far is kept (escape)",
                            self.action_stop)
        yield SystemCommand(f"{group}: Export {noun} JSON", "Write the last result as JSON (ctrl+e)",
                            self.action_export)

    # -- actions ------------------------------------------------------------------------------
    def action_run(self, **extra: Any) -> None:
        if self.busy:
            self.notify(f"A {self.NOUN} is running: Esc to stop it first", severity="warning")
            return
        fields, err = self.form()
        blocked = self.engine_ready()
        if err or blocked:
            self._w("error").update(tesc(err or blocked or ""))
            self.refresh_controls()
            return
        self.engine_error = ""
        self.result, self.result_state = None, ""
        launch = self.prepare(fields, **extra)
        if launch is None:
            self.refresh_controls()
            return
        self.run_settings = launch.settings
        self.started_at, self.finished_at = time.time(), None
        self.start_job(self.JOB_KIND, launch.fn, *launch.args, params=launch.params)
        self.say(launch.running)
        self.refresh_controls()

    def action_export(self) -> None:
        """The last result as one JSON envelope (engine/export.py) in the export folder."""
        from engine.export import export_job

        app = self.tokenforge_app
        if self.busy:
            self.notify(f"Wait for the {self.NOUN} to finish (or Esc) before exporting",
                        severity="warning")
            return
        if self.result is None:
            self.notify(f"Nothing to export yet: run a {self.NOUN} first", severity="warning")
            return
        try:
            path = export_job(app.settings.export_dir, self.EXPORT_STEM, self.JOB_KIND,
                              self.result, settings=self.run_settings,
                              model=getattr(app.lm, "name", None), state=self.result_state,
                              started_at=self.started_at, finished_at=self.finished_at)
        except (OSError, TypeError, ValueError) as e:
            notice(self, f"export failed: {e}", severity="error")
            return
        self.last_export = path
        notice(self, f"Exported to {path}", title="export", timeout=8)
        self.refresh_controls()

    # -- job messages -------------------------------------------------------------------------
    def job_started(self, m: JobStarted) -> None:
        self.refresh_controls()

    async def job_finished(self, m: JobFinished) -> None:
        self.finished_at = time.time()
        self.result, self.result_state = m.result, "finished"
        self.show_result(m.result)
        self.refresh_controls()

    async def job_cancelled(self, m: JobCancelled) -> None:
        self.finished_at = time.time()
        if m.partial is not None:  # the engine returns the best found so far
            self.result, self.result_state = m.partial, "cancelled"
            self.show_result(m.partial, note=self.cancelled_text(m))
        else:
            self.say(f"[yellow]{tesc(self.nothing_kept_text(m))}[/]")
        self.refresh_controls()

    async def job_failed(self, m: JobFailed) -> None:
        self.finished_at = time.time()
        self.engine_error = m.message + (f" — {m.hint}" if m.hint else "")
        self.say(f"[red]failed: {tesc(m.message)}[/]")
        self.refresh_controls()
