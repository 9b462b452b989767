"""Entry point of the terminal UI (``tokenforge`` with no subcommand).

Runs the app on its own event loop (``app.run(loop=…)``): ``asyncio.run`` would end by joining the
default executor, keeping the process alive while a thread finishes a long model call. If an
engine call is still in flight after the app exits (it ignored its cancel token), the process
leaves with ``os._exit`` — every file the project writes is atomic, so nothing is half-written.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any


def _quiet_logging() -> None:
    """Nothing may print over the TUI: library warnings go to a log file in the cache folder."""
    from engine.paths import cache_dir

    try:
        path = cache_dir("logs") / "tui.log"
        handler: logging.Handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)


def run_tui(args: Any, fast_exit: bool = True) -> int:
    """Run the app; with ``fast_exit`` (the CLI) leave with ``os._exit`` once the terminal is
    restored: tearing down an interpreter holding torch and a model took 4.5 s on the busy
    2-core machine, and nothing is pending (every file the project writes is atomic + fsynced,
    logs are flushed here)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _quiet_logging()
    from app.app import TokenforgeApp
    from app.terminal import save_tty, use_the_terminals_size

    save_tty()
    use_the_terminals_size()
    app = TokenforgeApp(args)
    loop = asyncio.new_event_loop()
    try:
        app.run(loop=loop)
    except KeyboardInterrupt:  # Ctrl+C before the app took the terminal (cooked mode)
        interrupted = True
    else:
        interrupted = False
    finally:
        rc = app.return_code or 0
        logging.getLogger("tokenforge.tui").info("app exited rc=%s in_flight=%d", rc,
                                                 app.runner.in_flight())
        if app.runner.in_flight():  # an engine call ignored its token: do not wait for it
            logging.shutdown()
            sys.stdout.flush()
            os._exit(rc)
    _drain(loop)
    loop.close()
    rc = 130 if interrupted else rc
    if fast_exit:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(rc)
    return rc


def _drain(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel tasks left on the loop (widget timers) so closing it logs no 'Task was destroyed'."""
    try:
        tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
    except Exception:
        pass
