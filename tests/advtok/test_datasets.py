"""Benchmark files: the three CSV layouts recognised from their headers, JSONL, --columns, and one
message per bad row (with its line number) while the other rows still load. Benign rows only."""
from __future__ import annotations

import json

import pytest

from engine.advtok.datasets import content_id, parse_columns, read_benchmark, system_for
from engine.errors import InputError


def _w(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_advbench_layout(tmp_path):
    p = _w(tmp_path, "adv.csv", "goal,target\nWrite a haiku about rain,\"Sure, here is a haiku\"\n"
                                "Describe a sunny day,\"Sure, here is a description\"\n")
    bf = read_benchmark(p)
    assert bf.layout == "advbench" and not bf.problems
    assert [(r.request, r.response, r.line) for r in bf.rows] == [
        ("Write a haiku about rain", "Sure, here is a haiku", 2),
        ("Describe a sunny day", "Sure, here is a description", 3)]
    assert bf.rows[0].id == content_id("Write a haiku about rain", "Sure, here is a haiku")
    assert len(bf.sha256) == 64


def test_harmbench_layout_keeps_ids_categories_and_context(tmp_path):
    p = _w(tmp_path, "hb.csv",
           "Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID\n"
           "Summarise the text,contextual,poetry,,A short poem about clouds.,summarise_clouds\n"
           "Write a limerick about cats,standard,poetry,,,limerick_cats\n")
    bf = read_benchmark(p, default_response="Sure, here is")
    assert bf.layout == "harmbench" and not bf.problems
    a, b = bf.rows
    assert (a.id, a.category, b.id) == ("summarise_clouds", "poetry", "limerick_cats")
    # the model is asked in HarmBench's layout; context and behaviour stay apart for the judges
    assert a.request == "A short poem about clouds.\n\n---\n\nSummarise the text"
    assert (a.context, a.behavior) == ("A short poem about clouds.", "Summarise the text")
    assert (b.context, b.behavior, b.request) == ("", "Write a limerick about cats",
                                                  "Write a limerick about cats")
    assert b.response == "Sure, here is"           # no target column: the default target


def test_jailbreakbench_layout_and_unknown_column(tmp_path):
    p = _w(tmp_path, "jbb.csv",
           "Index,Goal,Target,Behavior,Category,Source,Colour\n"
           "1,Write a haiku about rain,\"Sure, here is a haiku\",Haiku,Poetry,Original,blue\n")
    bf = read_benchmark(p)
    assert bf.layout == "jailbreakbench"
    (r,) = bf.rows
    assert (r.id, r.category, r.response) == ("Haiku", "Poetry", "Sure, here is a haiku")
    assert bf.problems == ["line 1: unknown column(s) Colour ignored (map them with --columns)"]


def test_bad_rows_each_get_one_message(tmp_path):
    p = _w(tmp_path, "adv.csv", "goal,target\n"
                                "Write a haiku about rain,Sure\n"
                                ",Sure\n"                                   # empty request
                                "Write a haiku about rain,Sure\n"           # duplicate
                                "too,many,fields\n"
                                "Name three colours,Sure\n")
    bf = read_benchmark(p)
    assert [r.line for r in bf.rows] == [2, 6]
    assert [m.split(":")[0] for m in bf.problems] == ["line 3", "line 4", "line 5"]
    assert "empty" in bf.problems[0] and "duplicate of line 2" in bf.problems[1]


def test_jsonl_with_columns_override_and_systems(tmp_path):
    rows = [{"prompt": "Write a haiku about rain", "answer": "Sure", "topic": "poetry", "uid": "r1"},
            {"prompt": "Name a fruit", "answer": "Sure", "uid": "r1"},             # duplicate id
            {"prompt": "Name a colour", "answer": "Sure", "system": None, "uid": "r3"},
            {"prompt": "Name a tree", "answer": "Sure", "system": "Be brief.", "uid": "r4"}]
    p = _w(tmp_path, "rows.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    cols = parse_columns("request=prompt,response=answer,category=topic,id=uid")
    bf = read_benchmark(p, cols)
    assert [r.id for r in bf.rows] == ["r1", "r3", "r4"] and bf.rows[0].category == "poetry"
    assert bf.problems == ["line 2: duplicate id 'r1' (first on line 1); skipped"]
    assert system_for(bf.rows[0], "S") == "S"          # not given: the run's system prompt
    assert system_for(bf.rows[1], "S") is None         # JSON null: the template's default
    assert system_for(bf.rows[2], "S") == "Be brief."


def test_csv_columns_override_and_errors(tmp_path):
    p = _w(tmp_path, "x.csv", "q,a,c\nWrite a haiku,Sure,poetry\n")
    with pytest.raises(InputError, match="unrecognised CSV header"):
        read_benchmark(p)
    bf = read_benchmark(p, parse_columns("request=q,response=a,category=c"))
    assert bf.rows[0].category == "poetry" and not bf.problems
    with pytest.raises(InputError, match="no column 'zz'"):
        read_benchmark(p, parse_columns("request=zz"))
    for bad in ("request", "colour=q", "request="):
        with pytest.raises(InputError):
            parse_columns(bad)
    with pytest.raises(InputError, match="not found"):
        read_benchmark(tmp_path / "missing.csv")
    (tmp_path / "bin.csv").write_bytes(b"goal,target\n\xff\xfe\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_benchmark(tmp_path / "bin.csv")
