"""The command line's side of the one validation layer (app/validate.py): every parsed option of
every command is checked here, before any work starts. One table says what each option is: an
option that sets a config field is checked against the bound declared on that field
(engine.bounds), the same one the TUI's form fields and the engine's ``validate()`` read, so the
three cannot disagree; a command adds nothing of its own.

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
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from app import validate as V
from engine.advtok.config import MAX_TEXT_BYTES, AttackConfig, DatasetRunConfig, TokenizeConfig
from engine.bench.config import BenchConfig
from engine.bounds import MAX_TEXT_CHARS, SEED_MAX, Bound, bound_of
from engine.budget import grid_bound, neighbours_bound, samples_bound
from engine.errors import InputError
from engine.lm.config import ChatConfig, ModelConfig, SamplingConfig
from engine.treesearch.config import TreeConfig

MAX_INPUT_BYTES = 1 << 30  # suites, datasets, runs files: engine.bounded_json.MAX_FILE_BYTES


@dataclass(frozen=True)
class Out:
    kind: str = "file"      # file | append | dir | file-or-stdout


@dataclass(frozen=True)
class In:
    max_bytes: int = MAX_INPUT_BYTES
    path_only: bool = False  # a value that may also be a name (bench --suite core-v1)


#: an option that is a config field: its bound is the one declared on that field (engine.bounds)
Field = tuple[type, str]
Rule = Union[Field, Bound, Out, In, None]
#: ``attack report --seed`` seeds the bootstrap of the report, which has no config of its own
BOOTSTRAP_SEED = Bound(kind="int", lo=0, hi=SEED_MAX, label="bootstrap seed")

#: option dest → rule, shared by every command; (command, dest) overrides where one name means
#: something else in one command. A config field's bound is read from its declaration.
COMMON: dict[str, Rule] = {
    "seed": (SamplingConfig, "seed"), "max_new_tokens": (SamplingConfig, "max_new_tokens"),
    "temperature": (SamplingConfig, "temperature"), "top_p": (SamplingConfig, "top_p"),
    "top_k": (SamplingConfig, "top_k"), "min_p": (SamplingConfig, "min_p"),
    "repetition_penalty": (SamplingConfig, "repetition_penalty"),
    "banned_ids": (SamplingConfig, "banned_ids"),
    "device": (ModelConfig, "device"),
    "dtype": (ModelConfig, "dtype"), "engine_path": (ModelConfig, "engine_path"),
    "context_size": (ModelConfig, "context_size"), "threads": (ModelConfig, "threads"),
    "prompt": (ChatConfig, "prompt"), "system": (ChatConfig, "system"),
    "response": (ChatConfig, "response"),
    "json": Out("file"),
}
BY_COMMAND: dict[tuple[str, str], Rule] = {
    ("chat", "json"): None,  # a flag there
    ("chat", "alternatives"): (ChatConfig, "alternatives"),
    ("chat", "stop"): (SamplingConfig, "stop_strings"),
    ("inspect", "json"): None,  # a flag there too
    ("inspect", "top_k"): (ChatConfig, "alternatives"),
    ("tokenize", "json"): None,
    ("tokenize", "sample"): (TokenizeConfig, "samples"),
    ("tokenize", "neighbours"): (TokenizeConfig, "neighbours"),
    ("tokenize", "limit"): (TokenizeConfig, "limit"),
    ("tokenize", "seed"): (TokenizeConfig, "seed"),
    ("tokenize", "dot"): Out("file"), ("tokenize", "out"): Out("file"),
    ("attack", "request"): (AttackConfig, "request"),
    ("attack", "response"): (AttackConfig, "response"),
    ("attack", "default_response"): (AttackConfig, "response"),
    ("attack", "system"): (AttackConfig, "system"),
    ("attack", "iters"): (AttackConfig, "iters"),
    ("attack", "max_neighbours"): (AttackConfig, "max_neighbours"),
    ("attack", "init"): (AttackConfig, "init"),
    ("attack", "temperature"): (AttackConfig, "temperature"),
    ("attack", "samples"): (AttackConfig, "samples"),
    ("attack", "sample_tokens"): (AttackConfig, "sample_max_new_tokens"),
    ("attack", "sample_temperature"): (AttackConfig, "sample_temperature"),
    ("attack", "sample_repetition_penalty"): (AttackConfig, "sample_repetition_penalty"),
    ("attack", "seed"): (AttackConfig, "seed"),
    ("attack", "batch_cap"): (AttackConfig, "batch_cap"),
    ("attack", "max_request_chars"): (AttackConfig, "max_request_chars"),
    ("attack", "judge_batch"): (DatasetRunConfig, "judge_batch"),
    ("attack", "rubric_max_tokens"): (DatasetRunConfig, "rubric_max_tokens"),
    ("attack", "shieldgemma_policies"): (DatasetRunConfig, "shield_policies"),
    ("attack", "json"): Out("file-or-stdout"), ("attack", "out"): Out("append"),
    ("attack", "dataset"): In(),
    ("search", "rollouts"): (TreeConfig, "rollouts"), ("search", "horizon"): (TreeConfig, "horizon"),
    ("search", "lam"): (TreeConfig, "lam"), ("search", "samples"): (TreeConfig, "n_samples"),
    ("search", "temperature"): (TreeConfig, "temperature"),
    ("search", "top_p"): (TreeConfig, "top_p"), ("search", "mode"): (TreeConfig, "mode"),
    ("search", "repetition_penalty"): (TreeConfig, "repetition_penalty"),
    ("search", "widening"): (TreeConfig, "widening"),
    ("search", "widening_alpha"): (TreeConfig, "widening_alpha"),
    ("search", "exploration"): (TreeConfig, "exploration"),
    ("search", "max_depth"): (TreeConfig, "max_depth"),
    ("search", "batch"): (TreeConfig, "batch"), ("search", "seed"): (TreeConfig, "seed"),
    ("bench", "repeats"): (BenchConfig, "repeats"),
    ("bench", "max_new_tokens"): (BenchConfig, "max_new_tokens"),
    ("bench", "seed"): (BenchConfig, "seed"),
    ("bench", "out"): Out("append"),
    ("bench", "csv"): Out("file"), ("bench", "markdown"): Out("file"), ("bench", "png"): Out("dir"),
    ("bench", "suite"): In(path_only=True),
    ("attack report", "markdown"): Out("file"), ("attack report", "csv"): Out("file"),
    ("attack report", "png"): Out("dir"), ("attack report", "seed"): BOOTSTRAP_SEED,
    ("attack judge", "out"): Out("file"),
    ("sessions", "json"): None,  # a flag there
    ("sessions", "markdown"): Out("file"),
    ("attack judge", "judge_batch"): (DatasetRunConfig, "judge_batch"),
    ("attack judge", "rubric_max_tokens"): (DatasetRunConfig, "rubric_max_tokens"),
    ("attack judge", "shieldgemma_policies"): (DatasetRunConfig, "shield_policies"),
}
#: free text that is no config field (tokenize's TEXT: its byte limit is checked by the engine)
TEXT_LIMITS = {"text": MAX_TEXT_CHARS}
#: every other string option is a name or a path
OTHER_TEXT_LIMIT = 16_384


def rule_for(command: Optional[str], dest: str) -> Rule:
    if (command, dest) in BY_COMMAND:
        return BY_COMMAND[(command, dest)]
    return COMMON.get(dest)


def bound_for(rule: Rule) -> Optional[Bound]:
    """The declared bound behind a rule (a config field's, or a bound of its own)."""
    if isinstance(rule, tuple):
        return bound_of(*rule)
    return rule if isinstance(rule, Bound) else None


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _named(name: str, b: Bound) -> str:
    """The option as typed, with the engine's word for it when that word differs
    (``--iters (iterations)``, ``--lambda (λ)``); text and names read clearly as typed."""
    if b.kind in ("int", "float") and b.label and b.label.replace("-", " ") != name.lstrip("-").replace("-", " "):
        return f"{name} ({b.label})"
    return name


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


def _text(name: str, v: str, dest: str, limit: Optional[int] = None) -> None:
    V.check_utf8(v, name)
    limit = limit or TEXT_LIMITS.get(dest, OTHER_TEXT_LIMIT)
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
        b = bound_for(r)
        if b is not None:
            name = _named(name, b)
        for item in (v if isinstance(v, list) else [v]):
            if isinstance(item, str):
                V.check_utf8(item, name)
                if b is None or b.kind not in ("text", "list"):  # their own bound says how long
                    _text(name, item, dest)
        if b is not None and b.kind == "list" and isinstance(v, str):
            # a list typed as one comma-separated value (--banned-ids 5,17): parsed here into
            # its typed items, within the item bound, and handed to the command as a tuple
            v = V.parse_bound(v, b, name)
            setattr(args, dest, v)
        if b is not None:
            if v is not None:  # None: not given (the config's default applies)
                b.check(name, v)
        elif r is not None:
            _check_path(name, v, r, force)
    extra = _EXTRA.get(command)
    if extra is not None:
        extra(args)


def _bench(args: argparse.Namespace) -> None:
    action = getattr(args, "action", "run")
    if action == "report" and args.file:
        V.check_input_file(args.file, "runs file", MAX_INPUT_BYTES)
    if action == "run":
        from app.commands.bench import DEFAULT_METHODS

        sweeps = getattr(args, "sweep", None) or []
        spec = args.methods if args.methods is not None else ("baseline" if sweeps else DEFAULT_METHODS)
        # each sweep value is one more method instance in the grid
        methods = max(1, len([m for m in spec.split(",") if m.strip()])
                      + sum(s.split("=", 1)[-1].count(",") + 1 for s in sweeps))
        grid_bound("--repeats", methods * _suite_size(args.suite)).check(args.repeats)


def _suite_size(name: str) -> int:
    """Entries in the suite (an upper bound on the queries selected from it)."""
    from engine.bench.suite_files import suite_entries

    return max(1, len(suite_entries(name)))


def _tokenize(args: argparse.Namespace) -> None:
    n = len(args.text.encode("utf-8", "surrogateescape")) if args.text != "-" else MAX_TEXT_BYTES
    samples_bound(n).check(args.sample)
    if args.neighbours is not None:
        neighbours_bound(n, args.neighbours).check(args.limit)


_EXTRA: dict[Optional[str], Callable[[argparse.Namespace], None]] = {
    "bench": _bench, "tokenize": _tokenize,
}


def add_force(parser: argparse.ArgumentParser) -> None:
    """The one overwrite switch, on every command that writes files."""
    parser.add_argument("--force", action="store_true",
                        help="overwrite output files that already exist (default: refuse)")
