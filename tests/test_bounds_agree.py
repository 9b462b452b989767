"""Every bounded field of every config, walked: its command-line option (where one exists) and its
TUI form field (where one exists) accept the declared lo/hi and refuse just outside, and the
engine's ``validate()`` agrees — the three read one declaration (engine.bounds), so they cannot
disagree. A new bounded field is walked without touching this file; a new option or form field
for a config field must be listed below (a test fails until it is)."""
from __future__ import annotations

import argparse
import contextlib
import io
import math
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Optional

import pytest
from textual._context import active_app

from app import argcheck
from app.cli import _load_commands, _startup, build_parser
from app.commands.attack_eval import build_sub_parser
from engine.advtok.config import AttackConfig, DatasetRunConfig, TokenizeConfig
from engine.bench.config import BenchConfig
from engine.bounds import MAX_TEXT_CHARS, Bound, bounded_fields
from engine.errors import EngineError, InputError
from engine.lm.config import ChatConfig, ModelConfig, SamplingConfig
from engine.treesearch.config import TreeConfig

CONFIGS = [SamplingConfig, ModelConfig, ChatConfig, AttackConfig, TokenizeConfig,
           DatasetRunConfig, TreeConfig, BenchConfig]
#: what each config needs to exist at all (its required fields)
BASE: dict[type, dict[str, Any]] = {AttackConfig: {"request": "hi", "response": "ok"},
                                    BenchConfig: {"methods": ["baseline"]}}
#: the cross-field checks of validate() that a value at the edge of its own bound needs to pass
#: (the request may be as long as the cap that is set for it; init "given" needs the ids)
CROSS: dict[tuple[type, str], dict[str, Any]] = {
    (AttackConfig, "request"): {"max_request_chars": MAX_TEXT_CHARS},
    (AttackConfig, "max_request_chars"): {"request": "h"},
    (AttackConfig, "init"): {"given_ids": [1]},
}
CONTEXT = 2048  # the loaded model's window, as the forms see it
#: values inside and outside a choice's family (``pattern``): a regex cannot list its matches
PATTERN_EXAMPLES = {r"cuda:\d+": (["cuda:0", "cuda:15"], ["cuda:", "cuda:x", "cuda0", "gpu:1"])}


def all_fields() -> list[tuple[type, str, Bound]]:
    return [(cls, name, b) for cls in CONFIGS for name, b in bounded_fields(cls)]


def edges(b: Bound, hi: Optional[float] = None) -> tuple[list[Any], list[Any]]:
    """(values just inside, values just outside) of a bound; ``hi`` a tighter top."""
    top = b.hi if hi is None else min(b.hi, hi)
    if b.kind == "int":
        return [b.lo, top], [b.lo - 1, top + 1]
    if b.kind == "float":
        eps = 1e-6 * max(1.0, abs(top))
        low = b.lo + 1e-6 * max(1.0, abs(b.lo)) if b.lo_open else b.lo
        below = b.lo if b.lo_open else b.lo - 1e-6 * max(1.0, abs(b.lo))
        return [low, top], [below, top + eps]
    if b.kind == "choice":
        more_in, more_out = PATTERN_EXAMPLES[b.pattern] if b.pattern else ([], [])
        return list(b.choices) + more_in, ["no-such-choice"] + more_out
    if b.kind == "list":  # as many items as allowed, each at its own edges; one too many
        item_in, item_out = edges(b.item)
        inside = [(), tuple(item_in[:1]) * b.max_items] + [(v,) for v in item_in]
        return inside, [tuple(item_in[:1]) * (b.max_items + 1)] + [(v,) for v in item_out
                                                                   if v != "   "]
    limit = b.max_chars if hi is None else min(b.max_chars, int(hi))
    outside = ["x" * (limit + 1)] + (["   "] if b.non_empty else [])
    return ["x", "x" * limit], outside


def as_text(v: Any) -> str:
    """A value as a user types it (a list: comma-separated, as its form field takes it)."""
    if isinstance(v, tuple):
        return ",".join(as_text(x) for x in v)
    return repr(v) if isinstance(v, float) else str(v)


def engine_accepts(cls: type, name: str, v: Any, cross: bool = True) -> bool:
    kw = {**BASE.get(cls, {}), **(CROSS.get((cls, name), {}) if cross else {}), name: v}
    try:
        cls(**kw).validate()
    except InputError:
        return False
    return True


@pytest.mark.parametrize("cls,name,b", all_fields(),
                         ids=[f"{c.__name__}.{n}" for c, n, _ in all_fields()])
def test_engine_validate_enforces_the_declared_bound(cls, name, b):
    inside, outside = edges(b)
    for v in inside:
        assert engine_accepts(cls, name, v), (name, str(v)[:40])
    for v in outside:
        assert not engine_accepts(cls, name, v), (name, str(v)[:40])
    if b.kind in ("int", "float"):
        assert not engine_accepts(cls, name, math.nan if b.kind == "float" else "1")


# ---- the command line -------------------------------------------------------------------------
#: a valid command line per command, to which one option is added
ARGV = {"chat": ["chat"], "inspect": ["inspect", "--prompt", "hi"], "tokenize": ["tokenize", "hi"],
        "attack": ["attack", "--request", "hi", "--response", "ok"],
        "search": ["search", "--prompt", "hi", "--reward", "words:a"], "bench": ["bench"],
        "attack judge": ["judge", "results.jsonl", "--judge", "refusal"], "attack report": ["report", "results.jsonl"]}
PARSER = build_parser(_load_commands())
SUB_PARSER = build_sub_parser()


def parser_options(parser: argparse.ArgumentParser) -> dict[str, str]:
    return {a.dest: next(o for o in a.option_strings if o.startswith("--"))
            for a in parser._actions if any(o.startswith("--") for o in a.option_strings)}


def command_parsers(every: bool = False) -> dict[str, argparse.ArgumentParser]:
    """Each command's parser (``attack judge`` etc. included; ``every``: also those the walk
    has no command line for)."""
    sub = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction))
    out = dict(sub.choices)
    inner = next(a for a in SUB_PARSER._actions if isinstance(a, argparse._SubParsersAction))
    out.update({f"attack {k}": v for k, v in inner.choices.items()
                if every or f"attack {k}" in ARGV})
    return out


def cli_options() -> Iterator[tuple[str, str, str, tuple[type, str]]]:
    """(command, dest, flag, (config, field)) of every option that sets a config field."""
    for command, parser in command_parsers().items():
        for dest, flag in parser_options(parser).items():
            rule = argcheck.rule_for(command, dest)
            if isinstance(rule, tuple):
                yield command, dest, flag, rule


ARGPARSE = "argparse: "


def cli_refuses(command: str, flag: str, value: Any) -> Optional[str]:
    """The one-line error of the command line with ``flag value`` (None: it would run);
    argparse's own refusals (a choice it lists) are marked."""
    action = next(a for a in command_parsers()[command]._actions if flag in a.option_strings)
    if isinstance(value, tuple) and isinstance(action, argparse._AppendAction):
        argv = ARGV[command] + [x for v in value for x in (flag, as_text(v))]  # --stop a --stop b
    else:
        argv = ARGV[command] + [flag, as_text(value)]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            if command.startswith("attack "):
                args = SUB_PARSER.parse_args(argv)
                try:
                    argcheck.check_args(args, command_parsers()[command], command=command)
                except EngineError as e:
                    return str(e)
                return None
            args = PARSER.parse_args(argv)
        except SystemExit:
            return ARGPARSE + err.getvalue()
        code = _startup(args, PARSER)
    return err.getvalue() if code else None


def test_every_config_option_of_every_command_is_walked():
    """The table maps options to config fields, and the walk below sees them (so it can fail)."""
    seen = {(c, d) for c, d, _, _ in cli_options()}
    assert {("attack", "samples"), ("search", "lam"), ("bench", "repeats"), ("tokenize", "sample"),
            ("chat", "top_p"), ("attack judge", "judge_batch"), ("inspect", "top_k")} <= seen


def test_every_numeric_option_has_a_declared_bound():
    """A number on the command line is always checked against a declared bound (a new option
    that sets a config field must be mapped to it in app/argcheck.py)."""
    bare = [f"{command} {a.option_strings[0]}"
            for command, parser in command_parsers(every=True).items()
            for a in parser._actions
            if a.type in (int, float) and argcheck.bound_for(argcheck.rule_for(command, a.dest)) is None]
    assert not bare, bare


@pytest.fixture
def roomy_machine(monkeypatch, tmp_path):
    """Memory-derived bounds far above the static ones, and a folder to write into: what is
    checked here is the declared range."""
    monkeypatch.setenv("TOKENFORGE_MEMORY_BYTES", str(1 << 60))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results.jsonl").write_text("")


@pytest.mark.parametrize("command,dest,flag,where", list(cli_options()),
                         ids=[f"{c}:{f}" for c, _, f, _ in cli_options()])
def test_cli_option_accepts_the_declared_edges_and_refuses_outside(roomy_machine, command, dest,
                                                                   flag, where):
    b = argcheck.bound_for(where)
    inside, outside = edges(b)
    offered = next(a.choices for a in command_parsers()[command]._actions if a.dest == dest)
    if b.kind == "choice" and offered:  # a flag may offer fewer (init "given" needs token ids)
        assert set(offered) <= set(b.choices), (flag, offered)
        inside = list(offered)
    for v in inside:
        err = cli_refuses(command, flag, v)
        assert err is None, (command, flag, str(v)[:40], err)
    for v in outside:
        err = cli_refuses(command, flag, v)
        assert err and "Traceback" not in err, (command, flag, str(v)[:40])
        if not err.startswith(ARGPARSE):  # argparse prints its usage line above its error
            assert len(err.strip().splitlines()) == 1, err
        assert flag in err, err


# ---- the TUI form fields ------------------------------------------------------------------------
def _screens() -> dict[str, Any]:
    from app.screens.attack import AttackScreen
    from app.screens.chat import ChatScreen
    from app.screens.dashboard import DashboardScreen
    from app.screens.search import SearchScreen
    from app.screens.settings import SettingsScreen

    return {"attack": AttackScreen(), "search": SearchScreen(), "settings": SettingsScreen(),
            "dashboard": DashboardScreen(), "chat": ChatScreen}


def tui_fields(screens: dict[str, Any]) -> dict[tuple[type, str], Callable[[str], Any]]:
    """(config, field) → the parser its form field runs (the screens' own callables)."""
    atk, ts, st = (screens[k].parsers() for k in ("attack", "search", "settings"))
    dash = screens["dashboard"]
    return {
        (AttackConfig, "request"): atk["atk-request"], (AttackConfig, "response"): atk["atk-response"],
        (AttackConfig, "system"): atk["atk-system"], (AttackConfig, "iters"): atk["atk-iters"],
        (AttackConfig, "max_neighbours"): atk["atk-neighbours"],
        (AttackConfig, "samples"): atk["atk-samples"],
        (AttackConfig, "sample_max_new_tokens"): atk["atk-sample-tokens"],
        (AttackConfig, "seed"): atk["atk-seed"],
        (ChatConfig, "prompt"): ts["ts-prompt"], (TreeConfig, "rollouts"): ts["ts-rollouts"],
        (TreeConfig, "horizon"): ts["ts-horizon"], (TreeConfig, "lam"): ts["ts-lambda"],
        (TreeConfig, "seed"): ts["ts-seed"], (TreeConfig, "n_samples"): ts["ts-samples"],
        (SamplingConfig, "max_new_tokens"): st["set-max-new"],
        (SamplingConfig, "temperature"): st["set-temperature"],
        (SamplingConfig, "top_k"): st["set-top-k"], (SamplingConfig, "top_p"): st["set-top-p"],
        (SamplingConfig, "seed"): st["set-seed"],
        (SamplingConfig, "repetition_penalty"): st["set-rep"],
        (SamplingConfig, "stop_strings"): st["set-stop"], (ModelConfig, "device"): st["set-device"],
        (SamplingConfig, "min_p"): st["set-min-p"], (SamplingConfig, "banned_ids"): st["set-banned"],
        (TreeConfig, "repetition_penalty"): ts["ts-rep"],
        (AttackConfig, "sample_repetition_penalty"): atk["atk-sample-rep"],
        (BenchConfig, "repeats"): dash._parse_repeats, (BenchConfig, "max_new_tokens"): dash._parse_mnt,
        (ChatConfig, "system"): screens["chat"].parse_system,
    }


#: form fields whose top is also the loaded model's context (an answer leaves room for a prompt)
BY_CONTEXT = {(AttackConfig, "sample_max_new_tokens"), (TreeConfig, "horizon"),
              (SamplingConfig, "max_new_tokens"), (BenchConfig, "max_new_tokens")}


@pytest.fixture
def form_app():
    """The screens' parsers read the app (the loaded model's context) as they would mounted."""
    token = active_app.set(SimpleNamespace(lm=SimpleNamespace(context_length=CONTEXT)))
    try:
        yield _screens()
    finally:
        active_app.reset(token)


def test_every_tui_field_is_a_bounded_config_field(form_app):
    fields = {(c, n) for c, n, _ in all_fields()}
    assert set(tui_fields(form_app)) <= fields


@pytest.mark.parametrize("cls,name,b", all_fields(),
                         ids=[f"{c.__name__}.{n}" for c, n, _ in all_fields()])
def test_tui_field_agrees_with_the_engine(form_app, cls, name, b):
    """The form accepts exactly what the engine's validate() accepts with the form's other
    settings at their defaults (and the model's context where the form applies it)."""
    parse = tui_fields(form_app).get((cls, name))
    if parse is None:
        pytest.skip("no TUI field sets it")
    hi = CONTEXT - 1 if (cls, name) in BY_CONTEXT else None
    inside, outside = edges(b)
    if hi is not None:
        inside, outside = [v for v in inside if v <= hi] + [hi], outside + [hi + 1]
    for v in inside + outside:
        want = engine_accepts(cls, name, v, cross=False) and (hi is None or v <= hi)
        try:
            got = parse(as_text(v))
            ok = True
        except InputError as e:
            ok = False
            assert str(e).strip() and "\n" not in str(e)
        assert ok == want, (name, str(v)[:40])
        if ok and b.kind in ("int", "float", "list"):
            assert got == v
    # the declared edges themselves, where the engine takes them at the form's defaults
    for v in inside:
        if engine_accepts(cls, name, v, cross=False):
            parse(as_text(v))
