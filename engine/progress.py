"""Progress reporting and cooperative cancellation shared by every long engine call.

Engine functions never print and never touch a UI: they call ``progress(Progress(...))`` and
``cancel.check()``. The front end decides how often to draw; the engine only promises to report
and check at least every ~100 ms of work.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

PHASES = ("load", "vocab", "mdd", "search", "tree", "prefill", "generate", "bench", "calibrate")


class Cancelled(Exception):
    """Raised inside an engine call when its CancelToken was set."""

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Progress:
    """One progress report: a phase, a step out of a total (total None = unknown), a message
    and free-form metrics (numbers or short strings; big ints as strings)."""

    phase: str
    step: int = 0
    total: Optional[int] = None
    message: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def fraction(self) -> Optional[float]:
        if not self.total:
            return None
        return max(0.0, min(1.0, self.step / self.total))


ProgressFn = Callable[[Progress], None]


class CancelToken:
    """Thread-safe cancellation flag; ``check()`` raises :class:`Cancelled` once set."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def cancel(self, reason: str = "cancelled") -> None:
        if not self._event.is_set():
            self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason or "cancelled")

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, waking early on cancel; True when cancelled."""
        return self._event.wait(seconds)


def report(progress: Optional[ProgressFn], phase: str, step: int = 0, total: Optional[int] = None,
           message: str = "", **metrics: Any) -> None:
    """Call ``progress`` if one was given (engine code stays free of None checks)."""
    if progress is not None:
        progress(Progress(phase, step, total, message, metrics))


def check(cancel: Optional[CancelToken]) -> None:
    if cancel is not None:
        cancel.check()


class Ticker:
    """Rate limiter for progress inside tight loops: ``due()`` is True at most every ``every`` s."""

    def __init__(self, every: float = 0.1) -> None:
        self.every = every
        self._last = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            return True
        return False
