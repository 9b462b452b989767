"""Data the program did not write reaches the terminal inert through every CLI printing path:
escape sequences (an OSC 52 clipboard write, a screen clear, the 8-bit CSI, a bidi override) and
Rich markup (``[/x]``, ``[/]``) are put into each text field of each file format in turn, and
the command's real stdout/stderr (file descriptors, captured) hold neither a control character
nor a traceback, and every run ends with an exit code (0, 1 or 2)."""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from app.cli import main
from engine.inert import is_inert

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "bench_runs.jsonl"
PAYLOAD = "\x1b]52;c;SGVsbG8=\x07\x1b[2J[/x][/]\x9b2J\u202e\\"


def string_paths(obj: Any, path: tuple = ()) -> Iterator[tuple]:
    """Every path to a string value in a JSON value."""
    if isinstance(obj, str):
        yield path
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from string_paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from string_paths(v, path + (i,))


def poisoned(obj: Any, path: tuple, i: int = 0) -> Any:
    """A copy of ``obj`` with the string at ``path`` carrying the payload (kept distinct per row
    with ``i`` so ids stay unique)."""
    out = copy.deepcopy(obj)
    cur = out
    for p in path[:-1]:
        cur = cur[p]
    cur[path[-1]] = f"{cur[path[-1]]}{PAYLOAD}{i}"
    return out


def assert_inert(capfd, code: int) -> str:
    out, err = capfd.readouterr()
    both = out + err
    assert code in (0, 1, 2), both
    assert "Traceback" not in both and "MarkupError" not in both, both
    assert is_inert(both, multiline=True), repr(both[:2000])
    return both


# ---------------------------------------------------------------------------- bench report
def _complete(lines: list[str]) -> list[dict[str, Any]]:
    out = []
    for s in lines:
        try:
            out.append(json.loads(s))
        except ValueError:
            pass  # the fixture ends in a torn line on purpose
    return out


RUNS = _complete(FIXTURE.read_text(encoding="utf-8").split("\n"))
RUN_PATHS = sorted(set(string_paths(RUNS[0])) | {("label",), ("status",), ("message",)}, key=str)


@pytest.mark.parametrize("path", RUN_PATHS, ids=lambda p: ".".join(map(str, p)))
def test_bench_report_every_runs_field(path, tmp_path, capfd):
    runs = tmp_path / "runs.jsonl"
    recs = [poisoned(r, path, i) if path[0] in r or len(path) == 1 else r for i, r in enumerate(RUNS)]
    runs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    md, cs = tmp_path / "t.md", tmp_path / "t.csv"
    code = main(["bench", "report", str(runs), "--markdown", str(md), "--csv", str(cs)])
    assert_inert(capfd, code)
    if md.exists():  # an export read in a terminal (cat, less -R) is inert too
        assert is_inert(md.read_text(encoding="utf-8"), multiline=True)


def test_bench_report_error_status_and_message(tmp_path, capfd, monkeypatch):
    """The known case: a failed run's status and message, and its label, with the payload."""
    monkeypatch.setenv("COLUMNS", "400")
    runs = tmp_path / "runs.jsonl"
    recs = [dict(r) for r in RUNS]
    recs[1].update(status="error", message=f"boom {PAYLOAD}", label=f"L {PAYLOAD}")
    runs.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    shown = assert_inert(capfd, main(["bench", "report", str(runs)]))
    assert "\\x1b]52;c;" in shown and "[/x]" in shown  # shown, escaped, not dropped


# ---------------------------------------------------------------------------- attack report
def _attack_rec(i: int, cat: str) -> dict[str, Any]:
    def side(labels):
        return [{"text": f"sample {k}", "token_ids": [1, 2], "verdicts": {
            j: {"judge": j, "label": lab, "reason": "r"} for j, lab in zip(("refusal", "target"), pair)}}
            for k, pair in enumerate(labels)]
    return {"id": f"r{i}", "line": i, "category": cat, "request": "Write a haiku.",
            "response": "Sure", "judges": ["refusal", "target"],
            "canonical_samples": side([("safe", "harmful"), ("safe", "safe")]),
            "adversarial_samples": side([("harmful", "harmful"), ("safe", "harmful")]),
            "improvement": 0.25 * i, "model": {"name": "m", "weights_hash": "abc"}}


ATTACK = [_attack_rec(i, c) for i, c in enumerate(["Poetry", "Colours", "Poetry"])]
ATTACK_PATHS = sorted(set(string_paths(ATTACK[0])), key=str)


@pytest.mark.parametrize("path", ATTACK_PATHS, ids=lambda p: ".".join(map(str, p)))
def test_attack_report_every_results_field(path, tmp_path, capfd):
    res = tmp_path / "results.jsonl"
    recs = [poisoned(r, path, i) for i, r in enumerate(ATTACK)]
    res.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    md, cs = tmp_path / "t.md", tmp_path / "t.csv"
    code = main(["attack", "report", str(res), "--markdown", str(md), "--csv", str(cs)])
    assert_inert(capfd, code)
    if md.exists():
        assert is_inert(md.read_text(encoding="utf-8"), multiline=True)


def test_attack_report_category_is_shown_escaped(tmp_path, capfd, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the table is folded to the width: room for the value
    res = tmp_path / "results.jsonl"
    recs = [dict(r, category=f"cat{PAYLOAD}") for r in ATTACK]
    res.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    shown = assert_inert(capfd, main(["attack", "report", str(res)]))
    assert "[/x]" in shown and "\\x1b[2J" in shown


# ---------------------------------------------------------------------------- argv
@pytest.mark.parametrize("argv", [
    ["attack", "report", f"/nonexistent/{PAYLOAD}"],
    ["bench", "report", f"/nonexistent/{PAYLOAD}"],
    ["attack", "replay", f"/nonexistent/{PAYLOAD}", "--row", PAYLOAD],
    ["tokenize", "abc", PAYLOAD, f"--zz{PAYLOAD}"],
    ["bench", "--out", f"/nonexistent/{PAYLOAD}/r.jsonl", "--methods", "baseline"],
    ["bench", "--methods", f"baseline,{PAYLOAD}"],
    ["attack", "--dataset", f"/nonexistent/{PAYLOAD}.csv", "--out", "x.jsonl"],
    ["--config", f"/nonexistent/{PAYLOAD}.toml", "tokenize", "abc"],
    ["--profile", PAYLOAD, "tokenize", "abc"],
    ["chat", "--session", PAYLOAD, "--model", f"/nonexistent/{PAYLOAD}", "--prompt", "hi"],
    [PAYLOAD],
])
def test_argv_in_error_lines(argv, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = int(e.code or 0)
    assert_inert(capfd, code)


# ---------------------------------------------------------------------------- saved sessions
@pytest.mark.slow  # starts a real process with the tiny model
def test_chat_session_note_and_name(tiny_lm, tiny_dir, tmp_path):
    """A session named ``[/]`` saved with another model whose id carries the payload: the note
    naming that model and the session line print inert, and the turn is answered."""
    import os
    import subprocess
    import sys

    from engine.sessions.store import SavedTurn, SessionStore

    d = tiny_dir
    st = SessionStore(tmp_path / "sessions" / "sessions.db")
    st.create("[/]", f"other{PAYLOAD}", "other-weights", None, {})
    ids = tiny_lm.tokenizer.encode("Hello", add_special_tokens=False)
    st.save_turn("[/]", 0, SavedTurn("Hello", ids, f"hi {PAYLOAD}", ids), ids + ids, 0,
                 model_id=f"other{PAYLOAD}", weights_hash="other-weights", sampling={})
    st.close()
    env = {**os.environ, "TOKENFORGE_SESSIONS": str(tmp_path / "sessions"), "COLUMNS": "400"}
    p = subprocess.run([sys.executable, "-m", "app.cli", "chat", "--model", str(d), "--session", "[/]",
                        "--prompt", "Go on", "--temperature", "0", "--max-new-tokens", "3"],
                       capture_output=True, text=True, env=env, timeout=300)
    both = p.stdout + p.stderr
    assert p.returncode == 0, both
    assert "Traceback" not in both and is_inert(both, multiline=True), repr(both)
    assert "other\\x1b]52;c;" in p.stderr and "session '[/]'" in p.stderr


# ---------------------------------------------------------------------------- other files read
def test_config_file_keys_and_values(tmp_path, capfd):
    """A TOML config whose key, profile name and value carry the payload: one error line, inert."""
    cases = [f'"k{PAYLOAD}" = 1\n', f'[profiles."p{PAYLOAD}"]\ntemperature = "hot{PAYLOAD}"\n',
             f'default_profile = "x{PAYLOAD}"\n', f'model_dirs = ["{PAYLOAD}", 3]\n']
    for i, body in enumerate(cases):
        cfg = tmp_path / f"c{i}.toml"
        cfg.write_text(body.replace("\\", "\\\\"), encoding="utf-8")
        shown = assert_inert(capfd, main(["--config", str(cfg), "tokenize", "abc"]))
        assert "error" in shown


def test_dataset_problems_are_inert(tmp_path, capfd):
    """Every row of the dataset bad, each problem quoting the payload (unknown fields, ids)."""
    d = tmp_path / "d.jsonl"
    rows = [{f"field{PAYLOAD}": 1, "request": "", "response": "Sure"},
            {"request": ["x"], "response": "Sure", "category": PAYLOAD},
            {"request": "ok", "response": {"no": PAYLOAD}}]
    d.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
                 + f"not json {PAYLOAD}\n", encoding="utf-8")
    code = main(["attack", "--dataset", str(d), "--out", str(tmp_path / "r.jsonl")])
    assert code == 2
    assert "no usable row" in assert_inert(capfd, code)


from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(min_size=1, max_size=40))
def test_generated_labels_through_bench_report(tmp_path_factory, capfd, label):
    """Any text (controls, markup of both dialects, surrogates, separators) as a runs file's
    label, method error message and model id: bench report prints it inert or says the line is
    bad, never a traceback."""
    d = tmp_path_factory.mktemp("gen")
    recs = [dict(r) for r in RUNS]
    recs[0] = dict(recs[0], label=label, model={**recs[0]["model"], "id": label})
    recs[1] = dict(recs[1], status="error", message=label)
    runs = d / "runs.jsonl"
    runs.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    assert_inert(capfd, main(["bench", "report", str(runs)]))


# ---------------------------------------------------------------------------- a model's output
#: the bundled tokenizer's ids for ESC, BEL, '[', '/' and ']': a model allowed only these writes
#: escape sequences and markup
HOSTILE_IDS = (212, 195, 75, 31, 77)


@pytest.mark.parametrize("json_out", [False, True])
def test_model_output_through_chat(tiny_dir, tiny_lm, capfd, json_out):
    """The real model and sampler, every other token banned (EOS too): whatever the answer
    holds reaches the terminal inert, streamed or as JSON."""
    tok = tiny_lm.tokenizer
    assert tok.decode([212]) == "\x1b" and tok.decode([195]) == "\x07"
    banned = [i for i in range(len(tok)) if i not in HOSTILE_IDS]
    argv = ["chat", "--model", str(tiny_dir), "--prompt", "hi", "--max-new-tokens", "24",
            "--temperature", "1.0", "--seed", "3", "--banned-ids", ",".join(map(str, banned))]
    shown = assert_inert(capfd, main(argv + (["--json"] if json_out else [])))
    escaped = ("\\u001b", "\\u0007") if json_out else ("\\x1b", "\\x07")  # JSON's own escapes
    assert any(e in shown for e in escaped), shown[-500:]  # shown, escaped, not dropped
