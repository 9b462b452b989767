"""Console entry point: ``tokenforge`` opens the TUI; ``tokenforge <command>`` runs headless."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from app.commands.common import add_model_args

# Each name is a module app/commands/<name>.py with register(subparsers) and run(args) -> int.
COMMANDS = ("chat", "tokenize", "attack", "search", "bench", "inspect", "sessions")

EXIT_USAGE = 2


def _load_commands() -> dict[str, object]:
    mods: dict[str, object] = {}
    for name in COMMANDS:
        try:
            mods[name] = importlib.import_module(f"app.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"app.commands.{name}":
                raise
    return mods


def build_parser(mods: dict[str, object]) -> argparse.ArgumentParser:
    from app.commands import profile_args

    parser = profile_args.ProfileParser(
        prog="tokenforge",
        description="Token-level, inference-time workbench for local LLMs. "
                    "Without a command: the terminal UI.")
    add_model_args(parser)
    parser.add_argument("--verify-cache", action="store_true",
                        help="hash every cached model, vocabulary and KV snapshot against its "
                             "record (damaged ones are moved aside and rebuilt); alone: only that. "
                             "Runs by itself after an unclean shutdown")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from app.argcheck import add_force

    for name, mod in mods.items():
        mod.register(sub)  # type: ignore[attr-defined]
    profile_args.prepare(parser)
    for p in sub.choices.values():
        if not any("--force" in a.option_strings for a in p._actions):
            add_force(p)
    return parser


def _startup(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Optional[int]:
    """Before any command: remove this program's stale temporary files, then check every
    option (app.argcheck). Returns an exit code when the command must not run."""
    from app.argcheck import check_args
    from app.commands.common import err_console, fail
    from engine.errors import EngineError
    from engine.tempclean import clean_cache

    try:
        cleaned = clean_cache()
    except (OSError, EngineError):
        cleaned = None
    if cleaned is not None and cleaned.removed:
        from app.inert import styled

        err_console().print(styled("[dim]{m}[/]", m=cleaned.message()))
    _verify(args)
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    own = sub.choices.get(args.command) if sub is not None and args.command else parser
    try:
        check_args(args, own)
    except EngineError as e:
        return fail(str(e), e.hint)
    return None


def _verify(args: argparse.Namespace) -> None:
    """``--verify-cache``, or an unclean end of an earlier run (engine/verify.py): a full hash
    of the caches. After an unclean shutdown only a problem found is reported."""
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    from app.commands.attack_eval import main as attack_action, route

    sub_argv = route(sys.argv[1:] if argv is None else argv)
    if sub_argv is not None:        # attack judge | report | merge: their own parser
        return attack_action(sub_argv)
    mods = _load_commands()
    parser = build_parser(mods)
    from engine.errors import EngineError

    try:
        args = parser.parse_args(argv)  # applies the config profile (flag > profile > default)
    except EngineError as e:  # a bad config file or an unknown profile: one line, exit 2
        from app.commands.common import fail

        return fail(str(e), e.hint)
    if args.command is None:
        code = _startup(args, parser)
        if code is not None:
            return code
        if args.verify_cache:  # `tokenforge --verify-cache` alone: the check, then exit
            return 0
        from app.tui import run_tui
        from engine.lm.threads import request

        request(getattr(args, "threads", None))   # applied when the TUI loads its model
        return run_tui(args)
    from app.interrupt import run_command

    def command() -> int:
        code = _startup(args, parser)
        if code is not None:
            return code
        return int(mods[args.command].run(args) or 0)  # type: ignore[attr-defined]

    # Ctrl+C for every headless command, from here on (app/interrupt.py)
    return run_command(command)


if __name__ == "__main__":
    sys.exit(main())
