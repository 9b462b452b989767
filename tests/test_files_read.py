"""Files the program reads, made hostile: JSON line separators inside strings, integers past the
int-string limit, wrong types, lone surrogates, long CSV cells, FIFOs and devices, deep
``--param`` values, a dataset whose every row is bad, a NaN setting — each is a bad value or a
bad row named with its line (or one error line), never a traceback, a hang or lost rows. And
whatever the program writes, its own reader reads back (a property over generated values)."""
from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from engine.bounded_json import BadJSON, iter_jsonl, loads, read_bytes

SEPARATORS = "\u2028\u2029\x85\x0b\x0c\x1c\x1d\x1e\r"
BIG = "9" * (sys.get_int_max_str_digits() + 1 if sys.get_int_max_str_digits() else 5000)


def _lines(tmp_path: Path, name: str, objs: list, raw_tail: str = "") -> Path:
    p = tmp_path / name
    p.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objs) + raw_tail,
                 encoding="utf-8")
    return p


# ---------------------------------------------------------------------------- line splitting
def test_jsonl_splits_on_newline_only(tmp_path):
    objs = [{"id": f"a{c}b", "text": f"x{c}y"} for c in SEPARATORS]
    p = _lines(tmp_path, "x.jsonl", objs)
    got = [(no, o) for no, o, err in iter_jsonl(p, strict=True)]
    assert got == list(enumerate(objs, 1))


def test_dataset_rows_with_separators_all_run(tmp_path):
    from engine.advtok.datasets import read_benchmark

    rows = [{"request": f"Write a poem{c}about rain", "response": "Sure"} for c in "\u2028\u2029\x85"]
    bf = read_benchmark(_lines(tmp_path, "d.jsonl", rows))
    assert [r.request for r in bf.rows] == [r["request"] for r in rows] and not bf.problems
    assert [r.line for r in bf.rows] == [1, 2, 3]


def test_runs_file_with_a_separator_in_the_suite_id_reads_back(tmp_path):
    from engine.bench.records import read_records

    fixture = Path(__file__).parent / "fixtures" / "bench_runs.jsonl"
    rec = json.loads(fixture.read_text(encoding="utf-8").split("\n")[0])
    rec["suite"] = "core\u2028v1"
    recs, problems = read_records(_lines(tmp_path, "runs.jsonl", [rec, rec]))
    assert len(recs) == 2 and not problems


# ---------------------------------------------------------------------------- huge integers
def test_huge_integer_is_a_bad_value_with_its_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"a": ' + BIG + '}\n{"a": 3}\n', encoding="utf-8")
    got = list(iter_jsonl(p, strict=False))
    assert [o for _, o, _ in got] == [{"a": 1}, None, {"a": 3}]
    assert "line 2" in got[1][2] and "digits" in got[1][2]
    with pytest.raises(BadJSON, match="line 2.*digits"):
        list(iter_jsonl(p, strict=True))


def test_huge_integer_in_each_format(tmp_path):
    from engine.advtok.datasets import read_benchmark
    from engine.advtok.records import read_results
    from engine.bench.records import read_records
    from engine.sessions.profiles import ConfigError, parse_config

    d = tmp_path / "d.jsonl"
    d.write_text('{"request": "a", "response": ' + BIG + '}\n'
                 '{"request": "Write a haiku.", "response": "Sure"}\n', encoding="utf-8")
    bf = read_benchmark(d)
    assert [r.line for r in bf.rows] == [2] and "line 1" in bf.problems[0]   # later rows still run
    r = tmp_path / "r.jsonl"
    r.write_text('{"id": "a", "line": ' + BIG + '}\n{"id": "b", "line": 2}\n', encoding="utf-8")
    rr = read_results(r)
    assert [x["id"] for x in rr.records] == ["b"] and any("line 1" in n for n in rr.notes)
    runs = tmp_path / "runs.jsonl"
    runs.write_text('{"schema": ' + BIG + '}\n', encoding="utf-8")
    recs, problems = read_records(runs)
    assert not recs and problems[0].startswith("line 1:") and "digits" in problems[0]
    with pytest.raises(ConfigError, match="line 2: a number with more than"):
        parse_config("snapshot_cap_mib = 1\nmodel_dirs = []\n[profiles.x]\n".replace(
            "model_dirs = []", "snapshot_cap_mib = " + BIG))


@pytest.mark.parametrize("argv", [["tokenize", "abc"],
                                  ["chat", "--session", "s1", "--prompt", "hi"]])  # the audit's case
def test_nan_snapshot_cap_is_one_clear_error(tmp_path, capfd, argv):
    from app.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text("snapshot_cap_mib = nan\n", encoding="utf-8")
    assert main(["--config", str(cfg), *argv]) == 2
    err = capfd.readouterr().err
    assert "snapshot_cap_mib must be a finite number" in err and "Traceback" not in err


# ---------------------------------------------------------------------------- wrong types
def _result(i: int, **kw):
    sample = {"text": "t", "token_ids": [1], "verdicts": {"refusal": {"judge": "refusal", "label": "safe"}}}
    rec = {"id": f"r{i}", "line": i, "category": "Poetry", "request": "Write a haiku.", "response": "Sure",
           "judges": ["refusal"], "canonical_samples": [sample], "adversarial_samples": [sample],
           "improvement": 0.1, "model": {"name": "m", "weights_hash": "abc"}}
    rec.update(kw)
    return rec


@pytest.mark.parametrize("bad", [
    {"canonical_samples": "oops"}, {"adversarial_samples": [1, 2]}, {"judges": "refusal"},
    {"improvement": "big"}, {"category": 7}, {"model": "m"}, {"line": "x"},
    {"canonical_samples": [{"text": 5}]}, {"adversarial_samples": [{"verdicts": []}]},
    {"best_ids": ["a"]}, {"prompt_ids": {"canonical": "x"}},
])
def test_wrong_type_is_a_bad_row(bad, tmp_path, capfd):
    from app.cli import main
    from engine.advtok.records import read_results

    p = _lines(tmp_path, "r.jsonl", [_result(1), _result(2, **bad)])
    rr = read_results(p)
    assert [r["id"] for r in rr.records] == ["r1"]
    assert any("line 2" in n and repr(next(iter(bad)))[1:-1] in n for n in rr.notes), rr.notes
    assert main(["attack", "report", str(p)]) == 0
    assert main(["attack", "replay", str(p), "--row", "r2"]) == 2   # no such (usable) row
    both = "".join(capfd.readouterr())
    assert "Traceback" not in both and "line 2" in both


# ---------------------------------------------------------------------------- rows of a dataset
def test_lone_surrogate_and_bad_types_are_bad_rows(tmp_path):
    from engine.advtok.datasets import read_benchmark

    p = tmp_path / "d.jsonl"
    p.write_text('{"request": "bad \\ud800 text", "response": "Sure"}\n'
                 '{"request": "ok", "response": "Sure", "category": ["x"]}\n'
                 '{"request": "ok2", "response": "Sure", "system": "\\udfff"}\n'
                 '{"request": "Write a haiku.", "response": "Sure"}\n', encoding="utf-8")
    bf = read_benchmark(p)
    assert [r.line for r in bf.rows] == [4]
    assert [m.split(":")[0] for m in bf.problems] == ["line 1", "line 2", "line 3"]
    assert "surrogate" in bf.problems[0] and "surrogate" in bf.problems[2]


def test_csv_cells_up_to_the_text_limit(tmp_path):
    from engine.advtok.datasets import read_benchmark
    from engine.bounds import MAX_TEXT_CHARS

    p = tmp_path / "d.csv"
    p.write_text("goal,target\n"
                 f'"{"a" * MAX_TEXT_CHARS}",Sure\n'
                 f'"{"b" * (MAX_TEXT_CHARS + 1)}",Sure\n'
                 "Write a haiku,Sure\n", encoding="utf-8")
    bf = read_benchmark(p)
    assert [r.line for r in bf.rows] == [2, 4]           # the long cell is one bad row
    assert bf.problems[0].startswith("line 3:") and "limit" in bf.problems[0]


def test_every_row_rejected_exits_2(tmp_path, capfd):
    from app.cli import main

    d = tmp_path / "d.jsonl"
    d.write_text('{"request": "", "response": "Sure"}\n{"nothing": 1}\n', encoding="utf-8")
    code = main(["attack", "--dataset", str(d), "--out", str(tmp_path / "r.jsonl")])
    err = capfd.readouterr().err
    assert code == 2 and "no usable row" in err and "Traceback" not in err
    assert not (tmp_path / "r.jsonl").exists()


# ---------------------------------------------------------------------------- regular files only
def _within(fn, seconds: float = 60.0):
    """Run ``fn`` in a thread; a hang is a failure (not a hung test run)."""
    out: dict = {}

    def go():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e
    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "reading blocked"
    if "error" in out:
        raise out["error"]
    return out.get("value")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_and_devices_are_refused_before_reading(tmp_path, capfd):
    from app.cli import main
    from engine import integrity
    from engine.advtok.datasets import read_benchmark
    from engine.errors import InputError

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(BadJSON, match="not a regular file"):
            _within(lambda: read_bytes(path, "file"))
        with pytest.raises(InputError, match="not a regular file"):
            _within(lambda: read_benchmark(path))
        assert _within(lambda: main(["--config", str(path), "tokenize", "abc"])) == 2
        err = capfd.readouterr().err
        assert "not a regular file" in err and "Traceback" not in err
    # a vocabulary's integrity record that is a FIFO: reported, never waited on
    vocab = tmp_path / "vocab.json"
    vocab.write_text("{}", encoding="utf-8")
    rec = integrity.file_record_path(vocab)
    os.mkfifo(rec)
    assert "not a regular file" in _within(lambda: integrity.check_file(vocab))


# ---------------------------------------------------------------------------- --param depth
def test_param_deeper_than_the_check_is_refused():
    from app.commands.bench import PARAM_DEPTH, parse_params
    from engine.errors import InputError

    ok = "[" * PARAM_DEPTH + "]" * PARAM_DEPTH
    assert parse_params([f"baseline.x={ok}"])["baseline"]["x"] == json.loads(ok)
    for d in (PARAM_DEPTH + 1, 20, 32, 40):
        with pytest.raises(InputError, match="nested more than"):
            parse_params(["baseline.x=" + "[" * d + "]" * d])


def test_param_deeper_than_the_check_writes_no_record(tmp_path, capfd, monkeypatch):
    """The audit's case through the command: refused before the model loads, so no record the
    reader would refuse is appended (and a rerun appends no duplicate)."""
    import app.commands.bench as bench_cmd
    from app.cli import main
    from app.commands.bench import PARAM_DEPTH

    def no_load(args):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(bench_cmd, "load_lm", no_load)
    runs = tmp_path / "runs.jsonl"
    deep = "[" * (PARAM_DEPTH + 1) + "]" * (PARAM_DEPTH + 1)
    for _ in range(2):
        assert main(["bench", "--methods", "baseline", "--param", f"baseline.x={deep}",
                     "--out", str(runs)]) == 2
        err = capfd.readouterr().err
        assert "nested more than" in err and "Traceback" not in err
    assert not runs.exists()


# ---------------------------------------------------------------------------- round trip
_scalars = (st.none() | st.booleans() | st.integers(min_value=-10 ** 300, max_value=10 ** 300)
            | st.floats(allow_nan=False) | st.text(st.characters(exclude_categories=("Cs",))))
_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=4)
                       | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=20)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=_values, text=st.text(st.characters(exclude_categories=("Cs",))))
def test_what_is_written_is_read_back(tmp_path_factory, payload, text):
    """A results row and a runs record holding generated values (every separator, any text,
    big numbers, nesting) are appended the way the program appends them and read back equal by
    the program's own readers."""
    from engine.advtok.records import read_results
    from engine.atomic import append_line
    from engine.bench.records import read_records

    d = tmp_path_factory.mktemp("rt")
    res = d / "r.jsonl"
    rec = _result(1, request=text, category=text, extra=payload)
    append_line(res, json.dumps(rec, ensure_ascii=False))
    rr = read_results(res)
    assert rr.records == [rec] and not rr.notes

    fixture = Path(__file__).parent / "fixtures" / "bench_runs.jsonl"
    run = json.loads(fixture.read_text(encoding="utf-8").split("\n")[0])
    run.update(suite=text, label=text, message=text, params={"x": payload})
    runs = d / "runs.jsonl"
    append_line(runs, json.dumps(run, ensure_ascii=False))
    recs, problems = read_records(runs)
    assert not problems and len(recs) == 1 and recs[0]["params"]["x"] == payload


def test_untokenizable_row_is_a_bad_row_and_the_run_goes_on(tiny_lm, tmp_path, monkeypatch):
    """A row whose text a tokenizer refuses (TypeError/UnicodeError inside the search) is one
    failed row named with its line; the next row still runs."""
    import engine.advtok.search as search_mod
    from engine.advtok.datasets import read_benchmark
    from engine.advtok.evalrun import run_rows
    from engine.advtok.search import AttackConfig

    d = tmp_path / "d.jsonl"
    d.write_text('{"request": "odd text", "response": "Sure"}\n'
                 '{"request": "Write a haiku.", "response": "Sure"}\n', encoding="utf-8")
    bench = read_benchmark(d)
    calls = []

    def fake_attack(lm, cfg, **kw):
        calls.append(cfg.request)
        raise TypeError("TextEncodeInput must be Union[TextInputSequence, ...]")

    monkeypatch.setattr(search_mod, "run_attack", fake_attack)
    summ = run_rows(tiny_lm, bench, lambda r: AttackConfig(request=r.request, response=r.response,
                                                           iters=1, samples=0).validate(),
                    [], tmp_path / "r.jsonl")
    assert calls == ["odd text", "Write a haiku."]          # the run went on past the bad row
    assert [m.split(":")[0] for m in summ.failed] == ["line 1", "line 2"]
    assert "tokenizer cannot encode" in summ.failed[0]


def test_toml_error_lines_count_newlines_only():
    """A U+2028 inside a TOML string is not a line break: the error names the real line."""
    from engine.sessions.profiles import ConfigError, parse_config

    with pytest.raises(ConfigError, match="line 2: snapshot_cap_mib"):
        parse_config('model_dirs = ["a\u2028b\u2029c"]\nsnapshot_cap_mib = -1\n')
