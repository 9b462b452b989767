"""Every command's parser and the shared validation layer driven with boundary and random values:
huge, negative, zero, NaN/inf, non-UTF-8 bytes, directories and existing files as output paths,
missing folders. Whatever comes in: argparse's exit 2 or the layer's one-line exit 2 (or a
command line that would run), never a traceback, memory bounded, nothing written.

In-process (parse + app.cli._startup, which is everything before a command's work) for speed;
then a handful of real processes for the same classes end to end."""
from __future__ import annotations

import contextlib
import io
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from app.cli import _load_commands, _startup, build_parser

ROOT = Path(__file__).resolve().parents[3]
NON_UTF8 = os.fsdecode(b"caf\xe9 \xff\xfe")          # what argv holds for Latin-1 bytes
MODS = _load_commands()
PARSER = build_parser(MODS)

# the options of each command that take a value, with the base arguments it needs
BASE = {
    "chat": ["chat", "--prompt", "hi"],
    "tokenize": ["tokenize", "hi"],
    "attack": ["attack", "--request", "hi", "--response", "Sure"],
    "search": ["search", "--prompt", "hi", "--reward", "words:a"],
    "bench": ["bench", "--methods", "baseline"],
}
INT_OPTS = {
    "chat": ["--max-new-tokens", "--top-k", "--seed"],
    "tokenize": ["--sample", "--neighbours", "--limit", "--seed"],
    "attack": ["--iters", "--max-neighbours", "--samples", "--sample-tokens", "--seed",
               "--batch-cap", "--max-request-chars"],
    "search": ["--rollouts", "--horizon", "--samples", "--seed", "--widening", "--max-depth",
               "--batch"],
    "bench": ["--repeats", "--max-new-tokens", "--seed"],
}
FLOAT_OPTS = {
    "chat": ["--temperature", "--top-p", "--min-p", "--repetition-penalty"],
    "attack": ["--temperature", "--sample-temperature", "--sample-repetition-penalty"],
    "search": ["--lambda", "--temperature", "--top-p", "--widening-alpha", "--exploration",
               "--repetition-penalty"],
}
PATH_OPTS = {
    "tokenize": ["--out", "--dot"], "attack": ["--json", "--out", "--dataset"],
    "search": ["--json"], "bench": ["--out", "--csv", "--markdown", "--png", "--suite"],
}
TEXT_OPTS = {"chat": ["--prompt", "--system"], "attack": ["--request", "--response"],
             "search": ["--prompt", "--system", "--reward"], "tokenize": [], "bench": ["--methods"]}

BOUNDARY_INTS = [0, -1, 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, 10**4000]
ints = st.one_of(st.sampled_from(BOUNDARY_INTS), st.integers(-(2**70), 2**70)).map(str)
floats = st.one_of(st.sampled_from(["nan", "inf", "-inf", "1e308", "-0", "0", "1e-320", "1", "x"]),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr))
texts = st.one_of(st.sampled_from([NON_UTF8, "", " ", "\x00", "\udcff", "<|im_end|>", "a" * 300_000]),
                  st.text(max_size=40))


def _paths(tmp: Path) -> list[str]:
    existing = tmp / "existing.json"
    existing.write_text("{}")
    return [str(tmp), str(existing), str(tmp / "missing" / "deep" / "x.json"), "/",
            str(tmp / "new.json"), NON_UTF8, str(existing / "under-a-file.json"), ""]


def run_front(argv: list[str]) -> tuple[int | None, str]:
    """argparse + the start-up layer, in-process: (exit code or None = would run, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = PARSER.parse_args(argv)
        except SystemExit as e:
            return int(e.code or 0), err.getvalue()
        code = _startup(args, PARSER)
    return code, err.getvalue()


def _check(argv: list[str], tmp: Path, before: set[str]) -> None:
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, err = run_front(argv)
    assert code in (None, 0, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code == 2 and err.startswith("error:"):
        assert len(err.strip().splitlines()) == 1, err        # one line
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    assert grown_mb < 200, (argv, grown_mb)
    assert {p.name for p in tmp.rglob("*")} == before, argv   # nothing written, nothing created


@pytest.fixture(scope="module")
def playground(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    paths = _paths(tmp)
    return tmp, paths, {p.name for p in tmp.rglob("*")}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_option_with_hostile_values(playground, data):
    tmp, paths, before = playground
    cmd = data.draw(st.sampled_from(sorted(BASE)))
    argv = list(BASE[cmd])
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["int", "float", "path", "text"]))
        pool = {"int": INT_OPTS, "float": FLOAT_OPTS, "path": PATH_OPTS, "text": TEXT_OPTS}[kind]
        if not pool.get(cmd):
            continue
        opt = data.draw(st.sampled_from(pool[cmd]))
        value = {"int": ints, "float": floats, "path": st.sampled_from(paths), "text": texts}[kind]
        argv += [opt, data.draw(value)]
    _check(argv, tmp, before)


@pytest.mark.parametrize("argv, words", [
    (["chat", "--seed", str(2**64)], "--seed"),
    (["search", "--prompt", "hi", "--reward", "words:a", "--seed", "-1"], "--seed"),
    (["bench", "--seed", str(10**20)], "--seed"),
    (["bench", "--repeats", str(2**62)], "--repeats: must be between 1 and 1,000,000"),
    (["search", "--prompt", NON_UTF8, "--reward", "words:a"], "not valid UTF-8"),
    (["attack", "--request", NON_UTF8, "--response", "x"], "not valid UTF-8"),
    (["chat", "--prompt", "hi", "--temperature", "nan"], "finite"),
    (["tokenize", "hi", "--out", "/"], "is a directory"),
    (["tokenize", "a" * 50, "--sample", "10001"], "--sample"),
    # the sampling settings each front end exposes, against their declared bounds
    (["chat", "--min-p", "1.5"], "--min-p: must be in [0, 1] (got 1.5)"),
    (["chat", "--repetition-penalty", "0"], "--repetition-penalty: must be in (0, 100]"),
    (["chat", "--banned-ids", "5,-1"], "--banned-ids: item 2: must be ≥ 0 (got -1)"),
    (["chat", "--banned-ids", "5,x"], "--banned-ids: item 2: 'x' is not a whole number"),
    (["chat", "--banned-ids", ",".join(["1"] * 262_145)], "262,145 given, at most 262,144"),
    (["chat"] + ["--stop", "s"] * 17, "--stop: 17 given, at most 16"),
    (["chat", "--stop", "x" * 1001], "--stop: item 1 is 1,001 characters: too long"),
    (["chat", "--device", "gpu"], "--device: must be one of auto, cpu, cuda, mps, cuda:N"),
    (["search", "--prompt", "hi", "--reward", "words:a", "--repetition-penalty", "101"],
     "--repetition-penalty: must be in (0, 100] (got 101)"),
    (["attack", "--request", "hi", "--response", "x", "--sample-repetition-penalty", "-1"],
     "--sample-repetition-penalty: must be in (0, 100] (got -1)"),
])
def test_each_class_is_one_line_exit_2(argv, words):
    code, err = run_front(argv)
    assert code == 2 and words in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_memory_bound_applies_inside_the_declared_range(monkeypatch):
    """BenchConfig.repeats declares the static range; the grid's memory is checked against
    this machine (here: 1 MB available) and names the limit."""
    monkeypatch.setenv("TOKENFORGE_MEMORY_BYTES", str(1_000_000))
    code, err = run_front(["bench", "--repeats", "1000000"])
    assert code == 2 and "the limit is --repeats ≤" in err, err


def test_output_paths_are_checked_before_any_work(tmp_path):
    existing = tmp_path / "r.json"
    existing.write_text("{}")
    for path, words in [(tmp_path, "is a directory"), (existing, "already exists"),
                        (tmp_path / "no" / "r.json", "does not exist")]:
        code, err = run_front(["search", "--prompt", "hi", "--reward", "words:a", "--json", str(path)])
        assert code == 2 and words in err, err
    assert run_front(["search", "--prompt", "hi", "--reward", "words:a", "--json", str(existing),
                      "--force"])[0] is None
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # root can write anywhere
            code, err = run_front(["tokenize", "hi", "--out", str(ro / "x.json")])
            assert code == 2 and "not writable" in err
    finally:
        ro.chmod(0o700)
    assert not (tmp_path / "no").exists()


def _cli(*argv: str, stdin: bytes = b"", env: dict | None = None) -> subprocess.CompletedProcess:
    e = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "app.cli", *argv], cwd=ROOT, env=e,
                          input=stdin, capture_output=True, timeout=120)


@pytest.mark.slow  # a real process
def test_real_processes_refuse_in_one_line(tmp_path):
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 50_000 + "]" * 50_000 + "\n")
    cases = [
        (["chat", "--prompt", "hi", "--seed", str(2**64)], "--seed"),
        ([b"search".decode(), "--prompt", NON_UTF8, "--reward", "words:a"], "not valid UTF-8"),
        (["bench", "--suite", str(deep), "--methods", "baseline", "--out", str(tmp_path / "r.jsonl")],
         "nested 50000 levels deep"),
        (["bench", "report", str(deep)], "no valid records"),
    ]
    for argv, words in cases:
        r = _cli(*argv)
        err = r.stderr.decode("utf-8", "replace")
        assert r.returncode == 2 and words in err and "Traceback" not in err, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.jsonl"]   # nothing written


def test_cache_env_naming_a_file_is_exit_2(tmp_path, monkeypatch, capsys):
    from app.cli import main

    f = tmp_path / "cachefile"
    f.write_text("x")
    monkeypatch.setenv("TOKENFORGE_CACHE", str(f))
    assert main(["tokenize", "hi"]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "Traceback" not in err
