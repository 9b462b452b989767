"""The command line's side of the one validation layer (app/validate.py): every parsed option of
every command is checked here, before any work starts, by the same parsers and bounds the TUI
forms use. One table says what each option is; a command adds nothing of its own.

- integers within the range the libraries accept (seeds: torch.Generator.manual_seed ≤ 2^63−1),
  floats finite and in range;
- sizes whose memory grows with the value bounded by what this machine can hold
  (engine.budget: the limit and why are in the message);
- text arguments valid UTF-8 (bytes that were not arrive as lone surrogates);
- output paths checked first: not a directory, the folder exists and is writable, an existing
  file replaced only with ``--force`` (append-only results files are extended, never replaced);
  input files exist, are files, readable, not over-large.

Checks that need the model (context length, KV bytes per token) run after it loads, through
``engine.budget`` from the command itself."""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

from app import validate as V
from engine.budget import SEED_MAX, grid_bound, token_lists_bound
from engine.errors import InputError

BIG = 1_000_000          # counts whose cost is time, not memory (iterations, tokens per answer)
INT64 = 2**63 - 1        # counts bounded by memory (engine.budget), not by a fixed number
MAX_INPUT_BYTES = 1 << 30  # suites, datasets, runs files: engine.bounded_json.MAX_FILE_BYTES


@dataclass(frozen=True)
class Int:
    lo: int
    hi: int
    optional: bool = False
    label: str = ""   # the engine's word for it, shown beside the flag


@dataclass(frozen=True)
class Float:
    lo: float
    hi: float
    lo_open: bool = False
    label: str = ""


@dataclass(frozen=True)
class Out:
    kind: str = "file"      # file | append | dir | file-or-stdout


@dataclass(frozen=True)
class In:
    max_bytes: int = MAX_INPUT_BYTES
    path_only: bool = False  # a value that may also be a name (bench --suite core-v1)


Rule = Any
SEED = Int(0, SEED_MAX)
TEMPERATURE = Float(0.0, 100.0)
TOP_P = Float(0.0, 1.0, lo_open=True)

#: option dest → rule, shared by every command; (command, dest) overrides where one name means
#: something else in one command
COMMON: dict[str, Rule] = {
    "seed": SEED, "max_new_tokens": Int(1, BIG), "temperature": TEMPERATURE, "top_p": TOP_P,
    "top_k": Int(0, 10_000_000), "json": Out("file"),
}
BY_COMMAND: dict[tuple[str, str], Rule] = {
    ("chat", "seed"): Int(0, SEED_MAX, optional=True),
    ("chat", "json"): None,  # a flag there
    ("chat", "alternatives"): Int(0, 100),
    ("inspect", "json"): None,  # a flag there too
    ("inspect", "top_k"): Int(0, 100),
    ("tokenize", "json"): None,
    ("tokenize", "sample"): Int(0, 10_000),                  # tokenview.MAX_SAMPLES
    ("tokenize", "neighbours"): Int(0, 16, optional=True),   # tokenview.MAX_K
    ("tokenize", "limit"): Int(1, INT64),
    ("tokenize", "dot"): Out("file"), ("tokenize", "out"): Out("file"),
    ("attack", "iters"): Int(1, BIG, label="iterations"),
    ("attack", "max_neighbours"): Int(1, BIG, optional=True),
    ("attack", "temperature"): Float(0.0, 100.0, lo_open=True),
    ("attack", "samples"): Int(0, 10_000), ("attack", "sample_tokens"): Int(1, BIG),
    ("attack", "sample_temperature"): TEMPERATURE,
    ("attack", "batch_cap"): Int(1, 4096, optional=True),
    ("attack", "max_request_chars"): Int(1, V.MAX_TEXT_CHARS),
    ("attack", "json"): Out("file-or-stdout"), ("attack", "out"): Out("append"),
    ("attack", "dataset"): In(),
    ("search", "rollouts"): Int(1, INT64), ("search", "horizon"): Int(1, BIG),
    ("search", "lam"): Float(1e-9, 1e4, label="λ"), ("search", "samples"): Int(1, 100_000),
    ("search", "temperature"): Float(0.0, 100.0, lo_open=True),
    ("search", "widening"): Int(1, BIG), ("search", "widening_alpha"): Float(0.0, 1.0),
    ("search", "exploration"): Float(0.0, 1e6), ("search", "max_depth"): Int(1, BIG, optional=True),
    ("search", "batch"): Int(1, 256),
    ("bench", "repeats"): Int(1, INT64), ("bench", "out"): Out("append"),
    ("bench", "csv"): Out("file"), ("bench", "markdown"): Out("file"), ("bench", "png"): Out("dir"),
    ("bench", "suite"): In(path_only=True),
    ("attack report", "markdown"): Out("file"), ("attack report", "csv"): Out("file"),
    ("attack report", "png"): Out("dir"), ("attack judge", "out"): Out("file"),
}
#: free-text options: the TUI's limit; every other string option is a name or a path
TEXT_LIMITS = {"prompt": V.MAX_TEXT_CHARS, "system": V.MAX_TEXT_CHARS, "request": V.MAX_TEXT_CHARS,
               "response": V.MAX_TEXT_CHARS, "text": V.MAX_TEXT_CHARS}
OTHER_TEXT_LIMIT = 16_384


def rule_for(command: Optional[str], dest: str) -> Rule:
    if (command, dest) in BY_COMMAND:
        return BY_COMMAND[(command, dest)]
    return COMMON.get(dest)


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _short(v: int) -> str:
    return f"{v:,}" if abs(v) < 10**30 else f"a {len(str(abs(v)))}-digit number"


def _check_int(name: str, v: Any, r: Int) -> None:
    if v is None:
        if not r.optional:
            raise InputError(f"{name}: a whole number is required")
        return
    if isinstance(v, bool) or not isinstance(v, int):
        raise InputError(f"{name}: {v!r} is not a whole number")
    if v < r.lo or v > r.hi:
        raise InputError(f"{name}: must be between {r.lo:,} and {r.hi:,} (got {_short(v)})")


def _check_float(name: str, v: Any, r: Float) -> None:
    if v is None:
        return
    if not isinstance(v, (int, float)) or not math.isfinite(v):
        raise InputError(f"{name}: must be a finite number (got {v!r})")
    if (v <= r.lo if r.lo_open else v < r.lo) or v > r.hi:
        left = "(" if r.lo_open else "["
        raise InputError(f"{name}: must be in {left}{r.lo:g}, {r.hi:g}] (got {v:g})")


def _check_path(name: str, v: Any, r: Rule, force: bool) -> None:
    if v is None:
        return
    if isinstance(r, Out):
        if r.kind == "file-or-stdout" and v == "-":
            return
        if r.kind == "dir":
            V.check_output_dir(v, name)
        else:
            V.check_output_file(v, name, overwrite=force, append=r.kind == "append")
    elif isinstance(r, In):
        if r.path_only and "/" not in v and not v.endswith(".jsonl"):
            return  # a shipped suite name, resolved by the engine
        V.check_input_file(v, name, r.max_bytes)


def _text(name: str, v: str, dest: str) -> None:
    V.check_utf8(v, name)
    limit = TEXT_LIMITS.get(dest, OTHER_TEXT_LIMIT)
    if len(v) > limit:
        raise InputError(f"{name}: {len(v):,} characters is too long (limit {limit:,})")


def option_names(parser: Optional[argparse.ArgumentParser]) -> dict[str, str]:
    """dest → the option as the user types it (``lam`` → ``--lambda``)."""
    out: dict[str, str] = {}
    for a in (parser._actions if parser is not None else []):
        longs = [o for o in a.option_strings if o.startswith("--")]
        if longs:
            out[a.dest] = longs[0]
    return out


def check_args(args: argparse.Namespace, parser: Optional[argparse.ArgumentParser] = None,
               command: Optional[str] = None) -> None:
    """InputError (one sentence) for the first bad option of the parsed command line;
    ``parser`` (the command's own) supplies the option names for the messages."""
    command = command or getattr(args, "command", None)
    force = bool(getattr(args, "force", False))
    names = option_names(parser)
    for dest, v in sorted(vars(args).items()):
        name = names.get(dest) or (dest if dest in ("text", "file") else _flag(dest))
        r = rule_for(command, dest)
        if getattr(r, "label", ""):
            name = f"{name} ({r.label})"
        if isinstance(v, str):
            _text(name, v, dest)
        elif isinstance(v, list):
            for item in v:
                if isinstance(item, str):
                    _text(name, item, dest)
        if r is None:
            continue
        if isinstance(r, Int):
            _check_int(name, v, r)
        elif isinstance(r, Float):
            _check_float(name, v, r)
        else:
            _check_path(name, v, r, force)
    extra = _EXTRA.get(command)
    if extra is not None:
        extra(args)


def _bench(args: argparse.Namespace) -> None:
    action = getattr(args, "action", "run")
    if action == "report" and args.file:
        V.check_input_file(args.file, "runs file", MAX_INPUT_BYTES)
    if action == "run":
        methods = max(1, len([m for m in (args.methods or "").split(",") if m.strip()]))
        grid_bound("--repeats", methods * _suite_size(args.suite)).check(args.repeats)


def _suite_size(name: str) -> int:
    """Entries in the suite (an upper bound on the queries selected from it)."""
    from engine.bench.suite_files import suite_entries

    return max(1, len(suite_entries(name)))


def _tokenize(args: argparse.Namespace) -> None:
    n = len(args.text.encode("utf-8", "surrogateescape")) if args.text != "-" else 100_000
    token_lists_bound("--sample", n).check(args.sample)
    if args.neighbours is not None:
        token_lists_bound("--limit", n).check(args.limit)


_EXTRA: dict[Optional[str], Callable[[argparse.Namespace], None]] = {
    "bench": _bench, "tokenize": _tokenize,
}


def add_force(parser: argparse.ArgumentParser) -> None:
    """The one overwrite switch, on every command that writes files."""
    parser.add_argument("--force", action="store_true",
                        help="overwrite output files that already exist (default: refuse)")
