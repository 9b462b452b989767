"""Leave the terminal usable on a forced exit (os._exit skips Textual's own cleanup), and size
the app from the terminal itself.

The one place that touches Textual's private ``App._driver``: if that breaks in a future Textual,
the fallback reapplies the termios attributes saved before the app started and writes the
escape codes that leave the alternate screen, show the cursor and stop mouse reporting.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Optional

RESET_SEQ = ("\x1b[<u"          # kitty keyboard protocol off
             "\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?1015l"  # mouse off
             "\x1b[?2004l"      # bracketed paste off
             "\x1b[?1004l"      # focus events off
             "\x1b[?7h"         # line wrap on
             "\x1b[?1049l"      # leave the alternate screen
             "\x1b[?25h")       # show the cursor

_saved: Optional[tuple[int, Any]] = None


def use_the_terminals_size() -> None:
    """Drop ``LINES``/``COLUMNS`` from the environment when stdout is a terminal that reports its
    size.

    Textual sizes the screen with ``shutil.get_terminal_size()``, at start and on every resize,
    and that reads those variables before asking the terminal. When set they are a snapshot,
    not this terminal's size: a pytest-xdist worker here carried ``LINES=24 COLUMNS=80`` from
    its start, and the TUI it started drew at 80×24 in a 120×40 terminal (and would have
    ignored every resize)."""
    try:
        size = os.get_terminal_size(sys.__stdout__.fileno()) if sys.__stdout__ else None
    except (OSError, ValueError):
        return
    if size is not None and size.columns > 0 and size.lines > 0:
        for k in ("LINES", "COLUMNS"):
            os.environ.pop(k, None)


def save_tty() -> None:
    """Remember the terminal attributes before the app changes them (called by run_tui, and by
    app/interrupt.py for the headless commands): those of stdin, else of the first of stdout and
    stderr that is a terminal."""
    global _saved
    _saved = None
    try:
        import termios

        fd = sys.__stdin__.fileno() if sys.__stdin__ else 0
        for cand in (fd, 1, 2):
            if os.isatty(cand):
                _saved = (cand, termios.tcgetattr(cand))
                return
    except Exception:
        _saved = None


def restore_tty() -> None:
    """The attributes saved by :func:`save_tty` and a visible cursor (a status line hides it):
    what a headless command needs on a forced exit; it never enters the alternate screen, so the
    rest of RESET_SEQ is not sent. Writes to the file descriptor: safe in a signal handler."""
    try:
        if _saved is not None:
            import termios

            termios.tcsetattr(_saved[0], termios.TCSANOW, _saved[1])
    except Exception:
        pass
    for fd in (2, 1):
        try:
            if os.isatty(fd):
                os.write(fd, b"\x1b[?25h")
                return
        except OSError:
            pass


def restore_terminal(app: Any) -> bool:
    """Undo application mode. True when Textual's driver did it, False when the fallback ran."""
    ok = False
    driver = getattr(app, "_driver", None)
    if driver is not None:
        try:
            driver.stop_application_mode()
            driver.close()  # flushes the writer thread
            ok = True
        except Exception:
            ok = False
    if not ok:
        _fallback()
    return ok


def _fallback() -> None:
    try:
        if _saved is not None:
            import termios

            termios.tcsetattr(_saved[0], termios.TCSANOW, _saved[1])
    except Exception:
        pass
    try:
        out = sys.__stdout__
        if out is not None and out.isatty():
            out.write(RESET_SEQ)
            out.flush()
    except Exception:
        pass
