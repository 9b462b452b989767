"""``tokenforge attack``: dataset runs (append, resume, half-written last line, invalid lines),
bad input as one line + exit 2, and one end-to-end single run on a saved tiny model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.cli import _load_commands, build_parser, main
from app.commands.attack_eval import run_dataset
from engine.advtok.datasets import content_id
from engine.advtok.records import read_lines
from engine.progress import CancelToken


def _args(*extra: str):
    parser = build_parser(_load_commands())
    return parser.parse_args(["attack", "--iters", "2", "--samples", "0", *extra])


ROWS = [
    {"request": "Compose an email", "response": "Sure."},
    "{not json",
    {"request": "Say hi", "response": "Hi!", "system": "Be brief."},
    {"request": "", "response": "x"},
    {"request": "Tell a joke", "response": "Why"},
]


def _write_rows(path: Path) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in ROWS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _out_lines(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return [json.loads(s) for s in text.splitlines()]


def test_dataset_run_resume_and_repair(tiny_lm, tmp_path):
    rows, out = tmp_path / "rows.jsonl", tmp_path / "out" / "results.jsonl"
    _write_rows(rows)
    args = _args("--dataset", str(rows), "--out", str(out))
    token = CancelToken()
    # first run: Ctrl+C-like cancel after the first finished row
    s1 = run_dataset(tiny_lm, args, rows, out, cancel=token, on_row=lambda i, n, r: token.cancel())
    assert s1.done == 1 and s1.interrupted
    first = _out_lines(out)
    assert len(first) == 1 and first[0]["line"] == 1
    assert first[0]["id"] == content_id("Compose an email", "Sure.")
    # a crash in the middle of writing the next line
    with open(out, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "x" * 20, "line": 3})[:17])
    s2 = run_dataset(tiny_lm, args, rows, out)
    assert s2.skipped == 1 and s2.done == 2 and not s2.interrupted and not s2.failed
    assert [m.split(":")[0] for m in s2.problems] == ["line 2", "line 4"]
    assert "not valid JSON" in s2.problems[0] and "empty or missing request" in s2.problems[1]
    assert any("half-written" in n for n in s2.notes)
    lines = _out_lines(out)                                   # no partial line left
    assert [r["line"] for r in lines] == [1, 3, 5]
    assert lines[1]["system"] == "Be brief."                  # per-row system prompt
    for r in lines:
        assert r["best_score"] >= r["canonical_score"]
        assert "".join(r["best_tokens"]) == r["request_text"]
    # a third run has nothing left to do
    s3 = run_dataset(tiny_lm, args, rows, out)
    assert s3.done == 0 and s3.skipped == 3 and len(_out_lines(out)) == 3


def test_read_lines_repairs_only_the_tail(tmp_path):
    out = tmp_path / "r.jsonl"
    good = json.dumps({"id": "a"}) + "\n"
    out.write_text(good + "garbage line\n" + json.dumps({"id": "b"}) + "\n" + '{"id": "c"',
                   encoding="utf-8")
    recs, notes = read_lines(out, repair=False)             # readers never change the file
    assert [r["id"] for r in recs] == ["a", "b"] and out.read_text(encoding="utf-8").endswith('"c"')
    recs, notes = read_lines(out, repair=True)
    assert [r["id"] for r in recs] == ["a", "b"]
    assert any("line 2" in n for n in notes) and any("half-written" in n for n in notes)
    assert out.read_text(encoding="utf-8").endswith('{"id": "b"}\n')
    # a complete but corrupt last line is redone too
    out.write_text(good + '{"id": "z", "line"\n', encoding="utf-8")
    recs, notes = read_lines(out, repair=True)
    assert [r["id"] for r in recs] == ["a"] and out.read_text(encoding="utf-8") == good


@pytest.mark.parametrize("argv, words", [
    (["attack", "--request", "", "--response", "x"], "request is empty"),
    (["attack", "--request", "hi", "--response", " "], "response is empty"),
    (["attack", "--request", "hi", "--response", "x", "--iters", "0"], "iterations"),
    (["attack", "--request", "hello there", "--response", "x", "--max-request-chars", "5"],
     "over the cap"),
    (["attack", "--request", "hi"], "--response"),
    (["attack", "--dataset", "/nonexistent/rows.jsonl", "--out", "o.jsonl"], "not found"),
    (["attack", "--dataset", "pyproject.toml"], "--out"),   # an existing file, no --out
    (["attack", "report", "/nonexistent/results.jsonl"], "not found"),
    (["attack", "judge", "/nonexistent/results.jsonl", "--judge", "refusal"], "not found"),
    (["attack", "--request", "hi", "--response", "x", "--out", "o.jsonl"], "--dataset"),
])
def test_bad_input_one_line_exit_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and words in err
    assert err.count("error:") == 1


def test_single_run_end_to_end(tiny_dir, tmp_path, capsys):
    out = tmp_path / "res.json"
    rc = main(["attack", "--model", str(tiny_dir), "--engine-path", "standard",
               "--request", "Compose an email", "--response", "Sure.", "--iters", "2",
               "--samples", "1", "--sample-tokens", "3", "--json", str(out)])
    assert rc == 0
    cap = capsys.readouterr()
    assert "it   1/2" in cap.err                   # one progress line per iteration
    assert "canonical" in cap.out and "adversarial" in cap.out and "│Com│pose│" in cap.out
    doc = json.loads(out.read_text(encoding="utf-8"))  # the TUI's export envelope
    assert (doc["format"], doc["kind"], doc["state"]) == ("tokenforge-export/1", "advtok", "finished")
    assert doc["settings"]["request"] == "Compose an email" and doc["settings"]["iters"] == 2
    assert doc["model"] and doc["started_at"] and doc["finished_at"]
    res = doc["result"]
    assert res["best_score"] >= res["canonical_score"]
    assert len(res["adversarial_samples"]) == 1 and len(res["canonical_samples"]) == 1


def test_dataset_cancel_during_samples_redoes_the_row(tiny_lm, tmp_path, monkeypatch):
    """Ctrl+C while a row's samples are generated leaves them partial: that row is not written,
    so a rerun does it again in full."""
    import engine.advtok.search as advtok

    rows, out = tmp_path / "rows.jsonl", tmp_path / "results.jsonl"
    rows.write_text(json.dumps({"request": "Compose an email", "response": "Sure."}) + "\n", encoding="utf-8")
    parser = build_parser(_load_commands())
    args = parser.parse_args(["attack", "--iters", "1", "--samples", "2", "--sample-tokens", "4",
                              "--dataset", str(rows), "--out", str(out)])
    token = CancelToken()
    real = advtok.sample_pair

    def cancelled_midway(*a, **kw):
        token.cancel()
        return real(*a, **kw)

    monkeypatch.setattr(advtok, "sample_pair", cancelled_midway)
    s1 = run_dataset(tiny_lm, args, rows, out, cancel=token)
    assert s1.interrupted and s1.done == 0
    assert not out.exists() or out.read_text(encoding="utf-8") == ""
    monkeypatch.setattr(advtok, "sample_pair", real)
    s2 = run_dataset(tiny_lm, args, rows, out)
    assert s2.done == 1 and s2.skipped == 0
    (rec,) = _out_lines(out)
    assert len(rec["adversarial_samples"]) == 2 and len(rec["canonical_samples"]) == 2
    assert all(s["stop_reason"] != "cancelled" for s in rec["adversarial_samples"] + rec["canonical_samples"])
