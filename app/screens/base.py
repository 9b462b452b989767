"""What every tokenforge screen shares: header, body, the phase-progress widget, footer, and the
plumbing for one engine job at a time (start through the runner, follow its messages, stop it).

A new screen subclasses ``ToolScreen``, yields its widgets from ``compose_body`` and starts work
with ``self.start_job(kind, fn, *args, **kwargs)`` (see app/runner.py). It then receives
``job_started/job_finished/job_cancelled/job_failed`` hooks for its own job only; the progress
widget is updated for it. ``palette_commands()`` adds command-palette entries while the screen is
active (the one palette mechanism: the app's ``get_system_commands`` asks the current screen);
``model_changed()``/``settings_changed()`` run when the app posts ``ModelChanged`` /
``SettingsChanged`` (app/messages.py). Widgets never call into their screen: they post
``ControlsChanged``, ``WidgetJobStarted`` and ``WidgetJobEnded``, handled here. Note: ``is_mounted`` is still False inside ``on_mount``; guard refreshes with
``if not self.children`` (composed) instead.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header

from app.app_access import AppAccess
from app.layout import COMPACT_WIDGETS, SHORT_ROWS
from app.messages import (ControlsChanged, JobCancelled, JobFailed, JobFinished, JobProgressed,
                          JobStarted, JobStuck, ModelChanged, SettingsChanged, TokensGenerated,
                          WidgetJobEnded, WidgetJobStarted)
from app.runner import Job
from app.widgets.phase_progress import PhaseProgress


class ToolScreen(AppAccess, Screen):
    """Base screen: one current job, Esc stops it."""

    BINDINGS = [
        Binding("escape", "stop", "Stop", id="stop", tooltip="Stop the running job of this screen"),
    ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.job: Optional[Job] = None

    # -- layout -------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        yield from self.compose_body()
        yield PhaseProgress(id="progress")
        yield Footer(compact=True)

    def on_resize(self, event: Any) -> None:
        """On a short terminal (the app's ``-short`` breakpoint, 80×24) fields, selects,
        buttons and check boxes drop their borders: one row each instead of three, so a form,
        its Run button and the results fit without scrolling."""
        self.fit_compact()

    def fit_compact(self) -> None:
        short = self.size.height < SHORT_ROWS
        for w in self.query(COMPACT_WIDGETS):
            if getattr(w, "compact", None) is not None and w.compact != short:
                w.compact = short

    def compose_body(self) -> ComposeResult:  # overridden
        return iter(())

    @property
    def progress_widget(self) -> PhaseProgress:
        return self.query_one("#progress", PhaseProgress)

    def on_mount(self) -> None:
        self.tokenforge_app.register_screen_listener(self)
        self.model_changed()

    def on_unmount(self) -> None:
        self.tokenforge_app.unregister_screen_listener(self)

    # -- app hooks ----------------------------------------------------------------------------
    def palette_commands(self) -> Iterable[SystemCommand]:
        """Command-palette entries of this screen (shown while it is active). Name them
        "<screen>: <Action>" and give the key in the help text."""
        return iter(())

    def model_changed(self) -> None:
        """The model finished loading, failed, or started reloading (see ``app.model_state``)."""

    def settings_changed(self) -> None:
        """Settings were applied (sampling, timeouts, export folder)."""

    def refresh_controls(self) -> None:
        """Redraw buttons and status lines from the screen's state (overridden)."""

    def on_model_changed(self, m: ModelChanged) -> None:
        self.model_changed()

    def on_settings_changed(self, m: SettingsChanged) -> None:
        self.settings_changed()

    def on_controls_changed(self, m: ControlsChanged) -> None:
        m.stop()
        self.refresh_controls()

    def on_widget_job_started(self, m: WidgetJobStarted) -> None:
        """A widget's job makes this screen busy (Run waits for it, Esc stops it)."""
        m.stop()
        self.job = m.job
        if m.progress:
            self.progress_widget.begin(m.job.kind, m.job.id)
        self.refresh_controls()

    def on_widget_job_ended(self, m: WidgetJobEnded) -> None:
        m.stop()
        if self.progress_widget.job_id == m.job_id:
            self.progress_widget.end(m.state, m.text, m.job_id)
        self.refresh_controls()

    # -- jobs ---------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.job is not None and not self.job.done

    def start_job(self, kind: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Job:
        app = self.tokenforge_app
        if kwargs.get("needs_model", True):
            app.preempt_probe()  # the user's job goes first
        job = app.runner.start(kind, fn, *args, target=self, **kwargs)
        self.job = job
        self.progress_widget.begin(kind, job.id)
        return job

    def _mine(self, m: Any) -> bool:
        return self.job is not None and m.job_id == self.job.id

    def on_job_started(self, m: JobStarted) -> None:
        if self._mine(m):
            m.stop()
            self.job_started(m)

    def on_job_progressed(self, m: JobProgressed) -> None:
        if self._mine(m):
            m.stop()
            self.progress_widget.show(m.progress, m.job_id)

    async def on_tokens_generated(self, m: TokensGenerated) -> None:
        if self._mine(m):
            m.stop()
            await self.tokens_generated(m)

    async def on_job_finished(self, m: JobFinished) -> None:
        if self._mine(m):
            m.stop()
            self.progress_widget.end("finished", f"done in {m.elapsed:.1f} s", m.job_id)
            await self.job_finished(m)

    async def on_job_cancelled(self, m: JobCancelled) -> None:
        if self._mine(m):
            m.stop()
            self.progress_widget.end("cancelled", f"cancelled ({m.reason}) after {m.elapsed:.1f} s",
                                     m.job_id)
            await self.job_cancelled(m)

    async def on_job_failed(self, m: JobFailed) -> None:
        if self._mine(m):  # not stopped: the app shows the toast
            self.progress_widget.end("failed", m.message, m.job_id)
            await self.job_failed(m)

    def on_job_stuck(self, m: JobStuck) -> None:
        if self._mine(m):  # not stopped: the app offers the force quit
            self.progress_widget.end("stuck", f"engine did not stop within {m.seconds:.0f} s",
                                     m.job_id)

    # overridable hooks
    def job_started(self, m: JobStarted) -> None: ...

    async def tokens_generated(self, m: TokensGenerated) -> None: ...

    async def job_finished(self, m: JobFinished) -> None: ...

    async def job_cancelled(self, m: JobCancelled) -> None: ...

    async def job_failed(self, m: JobFailed) -> None: ...

    def action_stop(self) -> None:
        """Esc: stop this screen's job (the engine stops at its next check)."""
        if self.busy and self.job is not None:
            self.job.cancel("user")
            self.notify("Stopping…", timeout=2)
