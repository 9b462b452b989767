"""``--config`` / ``--profile`` on every command, and precedence flag > profile > default.

argparse cannot tell a flag the user typed from its default, so before parsing every option a
profile can set gets a :class:`_Default` wrapper as its default (``append`` options get None);
after parsing, a value still wrapped was not typed, and the profile's value — or the unwrapped
built-in default — takes its place."""
from __future__ import annotations

import argparse
from typing import Any, Iterator

from app.inert import InertArgumentParser
from engine.lm.sampling_defaults import BUILT_IN, FLAG, PROFILE

# profile key -> argparse dest
DESTS = {"model": "model", "device": "device", "dtype": "dtype", "engine_path": "engine_path",
         "context_size": "context_size", "max_new_tokens": "max_new_tokens",
         "temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "stop": "stop",
         "min_p": "min_p", "repetition_penalty": "repetition_penalty", "banned_ids": "banned_ids",
         "system_prompt": "system"}
_BY_DEST = {v: k for k, v in DESTS.items()}


class _Default:
    """A built-in default, marked as such (never typed by the user)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:  # argparse's --help shows %(default)s
        return repr(self.value)


class ProfileParser(InertArgumentParser):
    """The top-level parser: ``parse_args`` returns args with the profile applied (subparsers
    go through ``parse_known_args`` and are left alone; the whole command line is needed)."""

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:  # type: ignore[override]
        return apply(super().parse_args(args, namespace))


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def prepare(parser: argparse.ArgumentParser) -> None:
    """Add --config/--profile to the parser and every subparser; mark profile-able defaults."""
    for p in _parsers(parser):
        have = {o for a in p._actions for o in a.option_strings}
        g = p.add_argument_group("profile")
        if "--config" not in have:
            g.add_argument("--config", default=argparse.SUPPRESS, metavar="PATH",
                           help="config file (default $TOKENFORGE_CONFIG or "
                                "~/.config/tokenforge/config.toml)")
        if "--profile" not in have:
            g.add_argument("--profile", default=argparse.SUPPRESS, metavar="NAME",
                           help="named profile from the config (flags still win)")
        for a in p._actions:
            if a.dest in _BY_DEST and not isinstance(a.default, _Default):
                a.default = None if isinstance(a, argparse._AppendAction) else _Default(a.default)


def apply(args: argparse.Namespace) -> argparse.Namespace:
    """Replace untyped defaults by the profile's values. Raises ConfigError. Sets
    ``args.tf_config`` and ``args.tf_profile`` (None when no profile is in use). Idempotent:
    cli.main applies it, and so does every command's ``guard`` (for callers that parse alone)."""
    if hasattr(args, "tf_config"):
        return args
    from engine.sessions.profiles import load_config

    cfg = load_config(getattr(args, "config", None))
    profile = cfg.profile(getattr(args, "profile", None))
    values = profile.values() if profile is not None else {}
    sources: dict[str, str] = {}  # profile key -> flag | profile | built-in
    for dest, v in list(vars(args).items()):
        key = _BY_DEST.get(dest)
        typed = not isinstance(v, _Default) and v is not None
        if key is not None:
            sources[key] = FLAG if typed else PROFILE if key in values else BUILT_IN
        if typed:
            continue
        if key in values:
            pv = values[key]
            setattr(args, dest, list(pv) if dest == "stop" else pv)
        elif isinstance(v, _Default):
            setattr(args, dest, v.value)
        elif dest == "stop":
            setattr(args, dest, [])
    args.tf_config = cfg
    args.tf_profile = profile
    args.tf_sources = sources
    return args
