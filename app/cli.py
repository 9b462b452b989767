"""Console entry point: ``tokenforge`` opens the TUI; ``tokenforge <command>`` runs headless."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from app.cache_check import add_flag, at_start
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
    add_flag(parser)  # --verify-cache (app/cache_check.py)
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
    from app.commands.common import fail
    from engine.errors import EngineError

    at_start(args)
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    own = sub.choices.get(args.command) if sub is not None and args.command else parser
    try:
        check_args(args, own)
    except EngineError as e:
        return fail(str(e), e.hint)
    return None


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
