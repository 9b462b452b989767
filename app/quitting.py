"""Quitting: the Ctrl+C policy, signal handlers, the graceful shutdown and the forced exit. A
mixin of ``TokenforgeApp``.

Ctrl+C (docs/tui.md): the first press cancels every running job, a model load included
("Cancelling… Ctrl+C again to force quit"); with nothing running (the speed probe and the
vocabulary build do not count) it quits gracefully (threads get ``SHUTDOWN_GRACE`` s). A second
press within ``FORCE_WINDOW`` s restores the terminal and exits at once (``os._exit(130)``), even
when a thread is stuck inside one long model call. ``kill -INT`` behaves the same; SIGTERM and
SIGHUP quit gracefully; ctrl+q quits gracefully.

The Ctrl+C binding is a *priority* binding, so it beats the copy binding of a focused Input or
TextArea (which would otherwise take the key whenever text is selected, and the contract would
break). Copy keeps working where it cannot cost a cancel: with nothing running, a first Ctrl+C
with text selected copies it (and says so) instead of quitting; a second press still force-quits.
``ctrl+insert`` copies at any time.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

from app.terminal import restore_terminal

log = logging.getLogger("tokenforge.app")


class QuitPolicy:
    """Ctrl+C, signals and exits (needs ``runner``, ``_bg_jobs``, ``quitting``, ``_signals``)."""

    FORCE_WINDOW = 2.0
    SHUTDOWN_GRACE = 2.0  # issue 6: threads finished or abandoned within 2 s

    # -- signals ------------------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, self._on_sigint)
            self._signals.append(signal.SIGINT)
            for s in (signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(s, self._on_sigterm)
                self._signals.append(s)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
            log.warning("signal handlers not installed")

    def _remove_signal_handlers(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        for s in self._signals:
            try:
                loop.remove_signal_handler(s)
            except Exception:
                pass
        self._signals.clear()

    def _on_sigint(self) -> None:
        self.action_interrupt()

    def _on_sigterm(self) -> None:
        self.call_next(self.action_quit)

    # -- quitting -----------------------------------------------------------------------------
    def action_interrupt(self) -> None:
        """Ctrl+C / SIGINT: cancel jobs; idle → graceful quit; twice within 2 s → force quit."""
        now, prev = time.monotonic(), self._last_ctrl_c
        self._last_ctrl_c = now
        log.info("interrupt (busy=%s, in_flight=%d)", self.runner.busy, self.runner.in_flight())
        # a model load is the user's job (they chose the model): the press cancels it and the app
        # stays; the other background work (speed probe, vocabulary) does not hold the app open:
        # with only that running the user wants to quit (shutdown cancels it)
        user_jobs = [j for j in self.runner.running()
                     if self._bg_jobs.get(j.id, "load") == "load"]
        if now - prev <= self.FORCE_WINDOW:
            self.force_quit(130)
        elif user_jobs:
            n = self.runner.cancel_all("user")
            self.notify(f"Cancelling {n} job(s)… press Ctrl+C again to force quit",
                        severity="warning", timeout=self.FORCE_WINDOW + 1)
        elif self.action_copy_selection():
            self.notify("Copied the selection · Ctrl+C again to force quit, ctrl+q to quit",
                        timeout=self.FORCE_WINDOW)
        else:
            self.notify("Quitting… press Ctrl+C again to force quit", timeout=self.FORCE_WINDOW)
            self._start_shutdown()

    def selected_text(self) -> str:
        """The text a copy would take: the focused field's selection, else the screen's (mouse)
        selection; "" when nothing is selected."""
        focused = self.focused
        text = getattr(focused, "selected_text", "") if focused is not None else ""
        if isinstance(text, str) and text:
            return text
        try:
            return self.screen.get_selected_text() or ""
        except Exception:  # no screen yet / a selection Textual cannot read
            return ""

    def action_copy_selection(self) -> bool:
        """Copy the selection to the clipboard (OSC 52 where the terminal allows); True if any."""
        text = self.selected_text()
        if text:
            self.copy_to_clipboard(text)
        return bool(text)

    async def action_quit(self) -> None:
        """ctrl+q / SIGTERM / SIGHUP: graceful (a worker, so the loop stays free for Ctrl+C)."""
        self._start_shutdown()

    def _start_shutdown(self) -> None:
        if self.quitting:
            return
        self.quitting = True
        self.run_worker(self._graceful_shutdown(), group="quit", exclusive=True, exit_on_error=False)

    async def _graceful_shutdown(self) -> None:
        log.info("shutdown: cancelling %d job(s)", len(self.runner.running()))
        ended = await self.runner.shutdown(grace=self.SHUTDOWN_GRACE)
        if not ended:
            log.warning("%d engine call(s) ignored cancel; exiting anyway", self.runner.in_flight())
        self.exit(return_code=0)

    def force_quit(self, code: int) -> None:
        """Restore the terminal and leave now, even if a thread is inside a long model call."""
        try:
            restore_terminal(self)
        finally:
            logging.shutdown()
            try:
                sys.stdout.flush()
            finally:
                os._exit(code)
