"""Leave the terminal usable on a forced exit (os._exit skips Textual's own cleanup).

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


def save_tty() -> None:
    """Remember the terminal attributes before the app changes them (called by run_tui)."""
    global _saved
    try:
        import termios

        fd = sys.__stdin__.fileno() if sys.__stdin__ else 0
        if os.isatty(fd):
            _saved = (fd, termios.tcgetattr(fd))
    except Exception:
        _saved = None


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
