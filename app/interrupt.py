"""Ctrl+C for every headless command, installed once by the CLI dispatcher (app/cli.py).

The command runs in a worker thread; the main thread only waits and owns a SIGINT handler, so a
press is acted on at once wherever the command is (model load, prefill, decoding, writing):

- first press: the current job's :class:`CancelToken` is set. Engine calls check it between their
  steps (model load between weight tensors, prefill between chunks, decoding between tokens) and
  return what they have; the command writes that (a partial result, the rows already done) and
  the process leaves with 130.
- second press: the terminal is restored (app/terminal.py) and the process leaves with 130 at
  once (``os._exit``).
- ``chat`` at its prompt (:meth:`Interrupts.idle`): a press exits (0); during an answer the first
  press stops that answer only and :meth:`Interrupts.rearm` gives the next answer a fresh token.

Why a handler and never ``except KeyboardInterrupt``: a second press landing inside the
``except`` block escaped as an unhandled KeyboardInterrupt (exit by SIGINT), a press landing while
a thread was being started was lost (the answer ran to its end), and a normal interpreter exit
tears torch down under a running engine thread (SIGABRT). So a process that was interrupted
leaves through ``os._exit`` after flushing what it wrote; locks die with it and temporary files
are removed by the next start-up.

Test hook (``TOKENFORGE_TEST_SIGNAL_POINTS``, see docs/interrupts.md): when the variable is set,
:func:`phase` prints ``phase:<name>`` on stderr the first time a phase starts, and at the phases
listed in it (comma-separated) waits for the next Ctrl+C before going on, so a test can signal a
real process at a known moment without sleeping.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

from app.terminal import restore_tty, save_tty
from engine.progress import CancelToken

EXIT_INTERRUPTED = 130
SIGNAL_POINTS_ENV = "TOKENFORGE_TEST_SIGNAL_POINTS"
_HOLD_S = 600.0  # the test hook's longest wait for a press (a test that never sends one fails)


def _say(text: str) -> None:
    """Write to stderr's file descriptor: safe inside a signal handler (no buffer, no lock)."""
    try:
        os.write(2, text.encode("utf-8", "replace"))
    except OSError:
        pass


class Interrupts:
    """One process's Ctrl+C state: the current job's token and the presses acted on."""

    def __init__(self) -> None:
        self.token = CancelToken()
        self.presses = 0          # presses since the last rearm (0, 1; a second one exits)
        self.interrupted = False  # any press acted on during this run
        self._idle = False
        self._idle_code = 0
        self._press = threading.Condition()
        self._count = 0           # every press, for the test hook
        self._previous: Any = None
        self._installed = False
        self.seen: set[str] = set()  # phases already announced (the test hook)

    # -- set-up -----------------------------------------------------------------------------
    def install(self) -> bool:
        """Take SIGINT and remember the terminal's attributes (main thread only; else False)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        save_tty()
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        self._installed = True
        return True

    def uninstall(self) -> None:
        if self._installed and self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        self._installed = False

    # -- the handler ------------------------------------------------------------------------
    def _on_sigint(self, *_: Any) -> None:
        self.presses += 1
        if self._idle:
            self.force_exit("\n", self._idle_code)
        if self.presses >= 2:
            self.force_exit("\ninterrupted twice: exiting now\n")
        self.interrupted = True
        self.token.cancel("user")
        _say("\ninterrupted: stopping… (Ctrl+C again exits now)\n")
        with self._press:  # an RLock: a press nested inside this handler cannot deadlock
            self._count += 1
            self._press.notify_all()

    # -- what commands use ------------------------------------------------------------------
    def rearm(self) -> CancelToken:
        """A fresh token for the next job after one ended (chat: the next answer). A press that
        cancelled the previous job is spent: the next one cancels the new job, or exits at the
        prompt."""
        self.token = CancelToken()
        self.presses = 0
        self.interrupted = False
        return self.token

    @contextmanager
    def idle(self, code: int = 0) -> Iterator[None]:
        """Nothing to cancel (chat's prompt): a press inside exits with ``code``, and so does one
        that came since the last :meth:`rearm` (it found no job to stop)."""
        for f in (sys.stdout, sys.stderr):  # this thread's own writes, before a press can exit
            f.flush()
        self._idle_code = code
        self._idle = True
        if self.presses:
            self.force_exit("\n", code)
        try:
            yield
        finally:
            self._idle = False

    def restore_terminal(self) -> None:
        """The attributes saved at start, and a visible cursor (app/terminal.py)."""
        restore_tty()

    def leave(self, code: int) -> None:
        """After the command ended: flush, restore the terminal and exit now (no interpreter
        teardown under torch)."""
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except Exception:  # noqa: BLE001 - leaving anyway
                pass
        self.restore_terminal()
        os._exit(code)

    def force_exit(self, message: str = "", code: int = EXIT_INTERRUPTED) -> None:
        """Leave at once, from the handler. Python's buffers are not flushed: the worker may be
        inside a write, and what it wrote is then either whole (flushed) or absent, never cut."""
        if message:
            _say(message)
        self.restore_terminal()
        os._exit(code)

    def presses_seen(self) -> int:
        """Every press so far (the test hook counts from here before it announces a phase)."""
        with self._press:
            return self._count

    def wait_for_press(self, after: int, timeout: float = _HOLD_S) -> None:
        """Block until more than ``after`` presses were seen (the test hook; never the main
        thread). The count is taken before the phase is announced: a press that lands between
        the announcement and this wait is not missed."""
        with self._press:
            self._press.wait_for(lambda: self._count > after, timeout)

    # -- running a command ------------------------------------------------------------------
    def run(self, fn: Callable[[], int]) -> int:
        """Run ``fn`` in a worker thread while this (main) thread waits and takes the presses.
        An interrupted run leaves through :meth:`leave`; otherwise the code is returned."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                box["code"] = int(fn() or 0)
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                box["error"] = e
            finally:
                done.set()

        threading.Thread(target=work, name="tokenforge-command", daemon=True).start()
        # an Event, not Thread.join: on 3.11 a join interrupted by a signal can mark a
        # still-running thread as finished
        while not done.wait(0.1):
            pass
        if "error" in box and not self.interrupted:
            raise box["error"]
        code = box.get("code", EXIT_INTERRUPTED)
        if self.interrupted:
            if "error" in box:
                _say(f"error after the interrupt: {type(box['error']).__name__}: {box['error']}\n")
            self.leave(code or EXIT_INTERRUPTED)
        return code


_current = Interrupts()


def current() -> Interrupts:
    return _current


def cancel_token() -> CancelToken:
    """The token of the job running now (a fresh, never-set one when nothing is installed)."""
    return _current.token


def run_command(fn: Callable[[], int]) -> int:
    """The dispatcher's entry: a new :class:`Interrupts` for this command, SIGINT taken for its
    duration (given back afterwards, for callers in the same process such as tests)."""
    global _current
    _current = Interrupts()
    if not _current.install():  # not the main thread: no signals reach us; run inline
        return int(fn() or 0)
    try:
        return _current.run(fn)
    finally:
        _current.uninstall()


def phase(name: str) -> None:
    """Test hook, off unless ``TOKENFORGE_TEST_SIGNAL_POINTS`` is set: say that a phase starts
    (``phase:<name>`` on stderr, once per name) and, at a listed phase, wait for the next press
    (for two presses when it is listed twice)."""
    points = os.environ.get(SIGNAL_POINTS_ENV)
    if points is None or name in _current.seen:
        return
    _current.seen.add(name)
    before = _current.presses_seen()  # before the announcement: a test may press at once
    _say(f"\nphase:{name}\n")
    for i in range([p.strip() for p in points.split(",")].count(name)):  # listed twice: 2 presses
        _current.wait_for_press(after=before + i)

