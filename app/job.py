"""One engine call as the runner tracks it: its id, kind, cancel token and state. A leaf module,
so the messages that carry a job (app/messages.py) and the runner that starts it (app/runner.py)
both import it and not each other."""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from engine.progress import CancelToken


@dataclass
class Job:
    """One engine call. ``state``: running → finished | cancelled | failed (``stuck`` while a
    thread outlives its grace period)."""

    id: int
    kind: str
    params: dict[str, Any]
    token: CancelToken
    timeout: Optional[float]
    started: float = field(default_factory=time.monotonic)
    state: str = "running"
    result: Any = None
    error: Optional[BaseException] = None
    cancel_reason: str = ""
    task: Optional[asyncio.Task] = None
    thread_done: threading.Event = field(default_factory=threading.Event)

    def cancel(self, reason: str = "user") -> None:
        """Ask the engine to stop at its next check (idempotent; the first reason wins)."""
        if not self.cancel_reason:
            self.cancel_reason = reason
        self.token.cancel(reason)

    @property
    def done(self) -> bool:
        return self.state in ("finished", "cancelled", "failed")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    async def wait(self) -> str:
        if self.task is not None:
            await asyncio.shield(self.task)
        return self.state
