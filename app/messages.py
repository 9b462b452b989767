"""Typed messages the runner posts about engine jobs (past tense: each reports something that
happened). Every message carries ``job_id`` so a screen drops messages of jobs it no longer owns.

They are posted to the screen (or app) that started the job and bubble up to the app, which
handles the global parts (toasts for failures and stuck jobs, the header's busy state).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from textual.message import Message

from engine.progress import Progress

if TYPE_CHECKING:
    from app.job import Job


class JobMessage(Message):
    """Base class: one job's event."""

    def __init__(self, job_id: int, kind: str) -> None:
        super().__init__()
        self.job_id = job_id
        self.kind = kind


class JobStarted(JobMessage):
    """Posted on the loop before the worker thread starts."""

    def __init__(self, job_id: int, kind: str, params: dict[str, Any]) -> None:
        super().__init__(job_id, kind)
        self.params = params


class JobProgressed(JobMessage):
    """A throttled progress report (≤ 20 Hz; a phase change is sent at once)."""

    def __init__(self, job_id: int, kind: str, progress: Progress) -> None:
        super().__init__(job_id, kind)
        self.progress = progress

    def can_replace(self, message: Message) -> bool:  # queue safety net: newest wins
        return (isinstance(message, JobProgressed) and message.job_id == self.job_id
                and message.progress.phase == self.progress.phase)


class TokensGenerated(JobMessage):
    """Streamed text since the previous message (batched every ≈50 ms, tail always flushed)."""

    def __init__(self, job_id: int, kind: str, text: str, token_ids: list[int], n_total: int) -> None:
        super().__init__(job_id, kind)
        self.text = text
        self.token_ids = token_ids
        self.n_total = n_total


class JobFinished(JobMessage):
    """The engine function returned normally."""

    def __init__(self, job_id: int, kind: str, result: Any, elapsed: float) -> None:
        super().__init__(job_id, kind)
        self.result = result
        self.elapsed = elapsed


class JobCancelled(JobMessage):
    """The job stopped because its token was set. ``reason``: user, timeout or shutdown.
    ``partial`` is what the engine returned anyway (chat returns the partial answer) or None."""

    def __init__(self, job_id: int, kind: str, reason: str, partial: Any, elapsed: float) -> None:
        super().__init__(job_id, kind)
        self.reason = reason
        self.partial = partial
        self.elapsed = elapsed


class JobFailed(JobMessage):
    """The engine raised. ``message`` and ``hint`` are for the user; ``detail`` is the traceback
    (logged, never shown unless the error is a bug rather than an EngineError)."""

    def __init__(self, job_id: int, kind: str, error: BaseException, message: str, hint: str,
                 detail: str, user_error: bool, elapsed: float) -> None:
        super().__init__(job_id, kind)
        self.error = error
        self.message = message
        self.hint = hint
        self.detail = detail
        self.user_error = user_error
        self.elapsed = elapsed


class JobStuck(JobMessage):
    """The grace period after a timeout/cancel passed and the thread is still inside the engine:
    the UI offers a force quit (Ctrl+C twice)."""

    def __init__(self, job_id: int, kind: str, seconds: float, reason: Optional[str] = None) -> None:
        super().__init__(job_id, kind)
        self.seconds = seconds
        self.reason = reason or ""


# -- app ↔ screens ↔ widgets --------------------------------------------------------------------
# The app tells every open screen that shared state changed; a widget tells its own screen about
# a job it started or that its state changed what the screen's controls should show. Messages,
# not calls into another object's methods: the receiver decides what to redraw.


@dataclass
class ModelChanged(Message, bubble=False):
    """The model finished loading, failed, or started reloading (posted to every open screen)."""


@dataclass
class SettingsChanged(Message, bubble=False):
    """Settings were applied: sampling, timeouts, export folder (posted to every open screen)."""


@dataclass
class ControlsChanged(Message):
    """A widget's state changed what its screen's buttons and status line should show."""


@dataclass
class WidgetJobStarted(Message):
    """A widget started an engine job of its own; its screen counts as busy until it ends
    (Run waits, Esc stops it). ``progress``: the screen's progress bar follows the job."""

    job: "Job"
    progress: bool = False


@dataclass
class WidgetJobEnded(Message):
    """A widget's job ended (``state``: finished, cancelled, failed; ``text`` for the bar)."""

    job_id: int
    state: str
    text: str


@dataclass
class RunFromIds(Message):
    """The attack's lattice asks its screen to run a search starting from these token ids."""

    ids: list[int]
