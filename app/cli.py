"""Console entry point: ``tokenforge`` opens the TUI; ``tokenforge <command>`` runs headless."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from app.commands.common import add_model_args

# Each name is a module app/commands/<name>.py with register(subparsers) and run(args) -> int.
COMMANDS = ("chat", "tokenize", "attack", "search", "bench", "inspect")

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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in mods.items():
        mod.register(sub)  # type: ignore[attr-defined]
    profile_args.prepare(parser)
    return parser


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
        from app.tui import run_tui

        return run_tui(args)
    return int(mods[args.command].run(args) or 0)  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
