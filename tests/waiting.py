"""Waiting in tests without depending on the machine's speed.

A test waits for the state it checks (``until`` in a Pilot test, ``eventually`` elsewhere, a
``threading.Event`` set by a worker thread), never for a fixed time: on the shared 2-core CI
machine at load 10 a step can take 20× longer than on a quiet one. ``DEADLINE_S`` only keeps a
broken test from hanging; it is no speed requirement, and a passing test never waits that long.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

DEADLINE_S = 120.0


async def until(pilot: Any, cond: Callable[[], Any], timeout: float = DEADLINE_S) -> None:
    """Let the Textual app process messages until ``cond()`` holds."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        await pilot.pause(0.01)


async def eventually(cond: Callable[[], Any], timeout: float = DEADLINE_S) -> None:
    """``until`` without an app: poll ``cond()`` while the event loop runs."""
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.01)

