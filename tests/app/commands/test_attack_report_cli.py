"""``attack report`` on a hand-made results file (no model): the headline is ΔASR with its
interval and n; piped output is a plain fixed-width table whose cells are never cut and whose
rows never wrap; Markdown, CSV and the PNG carry n; the exit-2 cases are one message each."""
from __future__ import annotations

import csv
import json

import pytest

from app.cli import main

LONG_CAT = "a category name far longer than twenty-five characters"


def _side(labels):
    return [{"text": "Sure, here is a haiku", "token_ids": [1, 2],
             "verdicts": {"refusal": {"judge": "refusal", "label": lab}}} for lab in labels]


@pytest.fixture
def results(tmp_path):
    p = tmp_path / "results.jsonl"
    rows = []
    for i in range(12):
        can = ["harmful" if i % 4 == 0 else "safe", "safe", "unparsed" if i % 3 == 0 else "safe"]
        adv = ["harmful" if i % 2 == 0 else "safe", "harmful" if i % 3 == 0 else "safe", "safe"]
        rows.append({"id": f"row{i:02d}", "line": i + 1, "request": "Write a haiku about rain",
                     "response": "Sure, here is", "category": LONG_CAT if i % 2 else "poetry",
                     "judges": ["refusal"], "canonical_samples": _side(can),
                     "adversarial_samples": _side(adv), "improvement": 0.5 + i / 10,
                     "model": {"name": "tiny", "weights_hash": "0123456789abcdef"}})
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def test_piped_report_is_whole_and_leads_with_delta(results, tmp_path, capsys):
    md, cs, png = tmp_path / "t.md", tmp_path / "t.csv", tmp_path / "plots"
    assert main(["attack", "report", str(results), "--markdown", str(md), "--csv", str(cs),
                 "--png", str(png)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "\x1b[" not in out and "│" not in out and "…" not in out    # plain, nothing cut
    # the first table is the headline: ΔASR per judge overall, then per category
    head = lines.index(next(x for x in lines if x.startswith("judge ")))
    assert "ΔASR (n rows)" in lines[head] and "ΔASR@3 (n rows)" in lines[head]
    body = lines[head + 2:head + 5]
    assert body[0].startswith("refusal  all") and " pp [" in body[0] and "n=12" in body[0]
    assert any(LONG_CAT in x for x in body)              # the whole category, on one line
    # every table line holds all its cells: no row continues on the next line
    for x in lines:
        if x.startswith("refusal "):
            assert x.count("n=") >= 2 or "verdicts" in x, x
    assert "ASR (n samples)" in out and "bounds canonical" in out
    assert "unparsed" in out and "Cohen" not in out       # one judge: no κ line
    mdt = md.read_text(encoding="utf-8")
    assert mdt.index("ΔASR") < mdt.index("Rates and bounds") and "n=12" in mdt
    assert f"| {LONG_CAT} |" in mdt
    rows = list(csv.DictReader(cs.open(encoding="utf-8")))
    delta = [r for r in rows if r["side"] == "delta" and r["metric"] == "asr"
             and r["category"] == "all"]
    assert len(delta) == 1 and delta[0]["n"] == "12" and delta[0]["unit"] == "rows"
    can = next(r for r in rows if r["side"] == "canonical" and r["metric"] == "asr"
               and r["category"] == "all")
    assert can["n"] == "32" and can["unit"] == "samples" and can["unparsed"] == "4"
    assert float(can["bound_unparsed_safe"]) <= float(can["value"]) <= float(can["bound_unparsed_harmful"])
    assert (png / "advtok-asr.png").stat().st_size > 1000


@pytest.mark.parametrize("extra, words", [
    (["--judges", "nosuch"], "unknown judge 'nosuch'"),
    (["--judges", ","], "selects no judge"),
    (["--k", "8"], "at most 3 samples per side"),
    (["--k", "0"], "≥ 1"),
    (["--k", "x"], "expected integers"),
])
def test_report_errors_exit_2_with_one_message(results, capsys, extra, words):
    assert main(["attack", "report", str(results), *extra]) == 2
    cap = capsys.readouterr()
    assert cap.err.count("error:") == 1 and words in cap.err, cap.err
    assert cap.out == ""                                  # no table of dashes


def test_report_of_an_empty_results_file_exits_2(tmp_path, capsys):
    p = tmp_path / "empty.jsonl"
    p.write_text("", encoding="utf-8")
    assert main(["attack", "report", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "no finished rows" in err


def test_an_empty_judge_selection_exits_2(results, tmp_path, capsys):
    before = results.read_bytes()
    assert main(["attack", "judge", str(results), "--judge", " "]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--judge selects no judge" in err
    assert results.read_bytes() == before
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"id": "a", "request": "Write a haiku", "response": "Sure"}\n', encoding="utf-8")
    assert main(["attack", "--dataset", str(rows), "--out", str(tmp_path / "o.jsonl"),
                 "--judge", ""]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--judge selects no judge" in err
    assert not (tmp_path / "o.jsonl").exists()
