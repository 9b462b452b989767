"""``--verify-cache`` for every command that reads the caches, and the check after an unclean
shutdown (engine/verify.py), in one place: the main parser and the ``attack judge`` and
``attack replay`` parsers (which load models) take the flag through :func:`add_flag`, and each
runs :func:`at_start` before its work.

``attack report`` and ``attack merge`` read only results files, never a cached model, vocabulary
or snapshot: the flag would check nothing they use, so they refuse it with that reason
(:func:`refuse_flag`) and hold no run mark."""
from __future__ import annotations

import argparse

FLAG = "--verify-cache"


def add_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(FLAG, action="store_true",
                   help="hash every cached model, vocabulary and KV snapshot against its "
                        "record (damaged ones are moved aside and rebuilt); alone: only that. "
                        "Runs by itself after an unclean shutdown")


def refuse_flag(p: argparse.ArgumentParser, command: str) -> None:
    """A hidden ``--verify-cache`` on a command that reads no cache: given, it is one usage error
    that says why (argparse alone would only say 'unrecognized arguments')."""
    why = (f"{command} reads only results files, no cached model, vocabulary or snapshot; "
           f"`tokenforge {FLAG}` alone checks the caches")

    class Refuse(argparse.Action):
        def __call__(self, *_: object) -> None:
            raise argparse.ArgumentError(self, why)

    p.add_argument(FLAG, nargs=0, action=Refuse, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def at_start(args: argparse.Namespace) -> None:
    """Before a command's work: remove this program's stale temporary files from the cache, then
    :func:`verify_at_start` for a command that reads the caches (it has the flag)."""
    from app.commands.common import err_console
    from engine.errors import EngineError
    from engine.tempclean import clean_cache

    try:
        cleaned = clean_cache()
    except (OSError, EngineError):
        cleaned = None
    if cleaned is not None and cleaned.removed:
        from app.inert import styled

        err_console().print(styled("[dim]{m}[/]", m=cleaned.message()))
    if hasattr(args, "verify_cache"):
        verify_at_start(args)


def verify_at_start(args: argparse.Namespace) -> None:
    """``--verify-cache``, or an unclean end of an earlier run: a full hash of the caches. After
    an unclean shutdown only a problem found is reported."""
    from app.commands.common import err_console
    from engine.errors import EngineError
    from engine.verify import mark_running, verify_cache

    asked = bool(getattr(args, "verify_cache", False))
    if not mark_running() and not asked:
        return
    err = err_console()
    try:
        with err.status("verifying the caches…") as status:
            res = verify_cache(say=lambda m: status.update(m))
    except (OSError, EngineError) as e:
        err.print(f"cache verification stopped: {e}", style="yellow", markup=False, highlight=False)
        return
    if asked or res.problems or res.unreadable:
        why = "" if asked else " (the last run did not end cleanly)"
        err.print(res.message() + why, style="yellow" if res.problems or res.unreadable else "dim",
                  markup=False, highlight=False)
