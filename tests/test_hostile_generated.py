"""Generated hostile inputs (hypothesis) for every file format the program reads, beyond the
hand-written cases of the audit (docs/hostile-inputs.md): any JSON value in any field of a
dataset row, a results row and a runs record; raw lines that are not JSON, numbers past the
int-string limit, lone surrogates, line separators; TOML configs of any shape; GGUF headers cut
or with bytes changed. The property each time: the reader returns rows and per-line problems
(never raises anything but the program's own one-line errors), every line is accounted for once,
and the commands that print what was read exit 0, 1 or 2 with nothing raw on the terminal."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from engine.errors import EngineError
from engine.inert import is_inert

FIXTURES = Path(__file__).resolve().parent / "fixtures"
BIG = "9" * (sys.get_int_max_str_digits() + 1)
RAW_BIG = "\x00BIG\x00"  # stands for an integer past the limit (json cannot write one)
SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

_text = st.text(max_size=30) | st.sampled_from([
    "\u2028", "a\u2029b", "x\x85y", "\x1b]52;c;SGVsbG8=\x07", "[/x]", "[/]", "\ud800", "\udfff z",
    "\x9b2J", "", " ", "\\", "\x00", "x" * 300])
_scalar = (st.none() | st.booleans() | st.integers() | st.floats() | _text
           | st.just(RAW_BIG) | st.integers(min_value=-10 ** 400, max_value=10 ** 400))
_value = st.recursive(_scalar, lambda c: st.lists(c, max_size=3)
                      | st.dictionaries(_text, c, max_size=3), max_leaves=8)


def _dumps(v) -> str:
    """JSON as a foreign writer might produce it: surrogates escaped (valid JSON), NaN allowed,
    separators raw, the placeholder replaced by a literal integer past the limit."""
    return json.dumps(v, ensure_ascii=False).replace(json.dumps(RAW_BIG, ensure_ascii=False), BIG)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_bytes("".join(ln + "\n" for ln in lines).encode("utf-8", "surrogatepass"))
    return path


def _set(obj, keys: list, value):
    """``obj`` with the value at the path ``keys`` (as far as it exists) replaced."""
    cur = obj
    for k in keys[:-1]:
        nxt = cur[k] if isinstance(cur, dict) and k in cur else None
        if not isinstance(nxt, (dict, list)):
            break
        cur = nxt
    last = keys[-1]
    if isinstance(cur, dict):
        cur[last] = value
    elif isinstance(cur, list) and cur:
        cur[0] = value
    return obj


# ---------------------------------------------------------------------------- datasets
_FIELDS = ["request", "response", "category", "id", "system", "goal", "target", "prompt", "x"]
_row = st.dictionaries(st.sampled_from(_FIELDS), _value, max_size=5)
_line = _row.map(_dumps) | _value.map(_dumps) | _text | st.just('{"request": ' + BIG + "}")


@SETTINGS
@given(lines=st.lists(_line, min_size=1, max_size=8))
def test_generated_dataset_rows(tmp_path_factory, lines):
    """Rows and problems name only lines that exist, each row once; a usable row is whole,
    encodable text within the text limit."""
    from engine.advtok.datasets import read_benchmark
    from engine.bounds import MAX_TEXT_CHARS

    lines = [ln.replace("\n", " ").replace("\r", " ") for ln in lines]
    p = _write(tmp_path_factory.mktemp("ds") / "d.jsonl", lines)
    try:
        bf = read_benchmark(p)
    except EngineError as e:  # a whole-file problem (e.g. nothing but blank lines): one message
        assert str(e) and "Traceback" not in str(e)
        return
    named = [int(m.split(":")[0].split()[1]) for m in bf.problems if m.startswith("line ")]
    used = [r.line for r in bf.rows]
    # a usable row may also carry a note (unknown fields ignored); every line named exists
    assert set(used) | set(named) <= set(range(1, len(lines) + 1))
    assert len(used) == len(set(used))
    for r in bf.rows:
        for s in (r.request, r.response, r.category or "", r.system or ""):
            assert isinstance(s, str) and len(s) <= MAX_TEXT_CHARS
            s.encode("utf-8")  # no lone surrogate reaches a tokenizer


# ---------------------------------------------------------------------------- results files
RUBRIC = "rubric:m"


def _result(i: int) -> dict:
    def verdicts(label: str) -> dict:
        return {"refusal": {"judge": "refusal", "label": label},
                RUBRIC: {"judge": RUBRIC, "label": label, "detail": {"strongreject": 0.5}}}
    sample = {"text": "t", "token_ids": [1], "verdicts": verdicts("safe")}
    return {"id": f"r{i}", "line": i, "category": "Poetry", "request": "Write a haiku.",
            "response": "Sure", "judges": ["refusal", RUBRIC], "canonical_samples": [sample],
            "adversarial_samples": [dict(sample, verdicts=verdicts("harmful"))],
            "improvement": 0.1, "canonical_score": -1.5, "best_score": -1.0,
            "model": {"name": "m", "weights_hash": "abc"}}


_RESULT_KEYS = [["id"], ["line"], ["category"], ["request"], ["judges"], ["improvement"],
                ["model"], ["model", "name"], ["canonical_samples"],
                ["canonical_samples", 0, "text"], ["canonical_samples", 0, "verdicts"],
                ["adversarial_samples", 0, "verdicts", "refusal"],
                ["adversarial_samples", 0, "verdicts", "refusal", "label"],
                ["adversarial_samples", 0, "verdicts", RUBRIC, "detail"],
                ["canonical_samples", 0, "verdicts", RUBRIC, "detail", "strongreject"],
                ["canonical_score"], ["best_score"], ["canonical_ids"], ["extra"]]


@SETTINGS
@given(changes=st.lists(st.tuples(st.integers(0, 3), st.sampled_from(_RESULT_KEYS), _value),
                        max_size=4), junk=st.lists(_text, max_size=2))
def test_generated_results_rows(tmp_path_factory, capfd, changes, junk):
    from app.cli import main
    from engine.advtok.records import read_results

    recs = [_result(i) for i in range(4)]
    for i, keys, v in changes:
        _set(recs[i], keys, v)
    lines = [_dumps(r) for r in recs] + [j.replace("\n", " ") for j in junk]
    p = _write(tmp_path_factory.mktemp("rs") / "r.jsonl", lines)
    try:
        rr = read_results(p)
        assert all(isinstance(r, dict) for r in rr.records) and len(rr.records) <= 4
    except EngineError as e:  # a whole-file problem (bytes that are not UTF-8): one line
        assert "line " in str(e)
    capfd.readouterr()
    code = main(["attack", "report", str(p)])
    out, err = capfd.readouterr()
    assert code in (0, 1, 2) and "Traceback" not in out + err
    assert is_inert(out + err, multiline=True)


# ---------------------------------------------------------------------------- runs files
def _runs() -> list[dict]:
    out = []
    for s in (FIXTURES / "bench_runs.jsonl").read_text(encoding="utf-8").split("\n"):
        try:
            out.append(json.loads(s))
        except ValueError:
            pass
    return out


RUNS = _runs()


def _paths(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield path + (k,)
            yield from _paths(v, path + (k,))
    elif isinstance(obj, list) and obj:
        yield path + (0,)
        yield from _paths(obj[0], path + (0,))


RUN_KEYS = sorted(set(_paths(RUNS[0])), key=str)


@SETTINGS
@given(changes=st.lists(st.tuples(st.integers(0, len(RUNS) - 1), st.sampled_from(RUN_KEYS), _value),
                        min_size=1, max_size=3))
def test_generated_runs_records(tmp_path_factory, capfd, changes):
    """Any value of any type at any place of a runs record: the record is read or named as a
    bad line, and ``bench report`` (tables, Markdown, CSV) never ends in a traceback."""
    import copy

    from app.cli import main
    from engine.bench.records import read_records

    recs = copy.deepcopy(RUNS)
    for i, keys, v in changes:
        _set(recs[i], list(keys), v)
    d = tmp_path_factory.mktemp("runs")
    p = _write(d / "runs.jsonl", [_dumps(r) for r in recs])
    try:
        got, problems = read_records(p)
        assert len(got) + len(problems) >= 1
    except EngineError as e:  # a whole-file problem (bytes that are not UTF-8): one line
        assert "line " in str(e) and "UTF-8" in str(e)
    capfd.readouterr()
    code = main(["bench", "report", str(p), "--csv", str(d / "t.csv"), "--markdown",
                 str(d / "t.md"), "--force"])
    out, err = capfd.readouterr()
    assert code in (0, 1, 2) and "Traceback" not in out + err, out + err
    assert is_inert(out + err, multiline=True)


# ---------------------------------------------------------------------------- TOML configs
def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(v, "nan" if v != v else repr(v))
    if isinstance(v, str):
        return json.dumps(v) if v != RAW_BIG else BIG
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return '""'


_TOP = ["default_profile", "model_dirs", "snapshot_cap_mib", "zzz"]
_PROF = ["model", "device", "dtype", "engine_path", "context_size", "max_new_tokens",
         "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "banned_ids", "stop",
         "system_prompt", "timeouts", "nope"]


@SETTINGS
@given(top=st.dictionaries(st.sampled_from(_TOP), _value, max_size=3),
       prof=st.dictionaries(st.sampled_from(_PROF), _value | st.dictionaries(
           st.sampled_from(["chat", "attack", "search", "bench", "x"]), _value, max_size=2),
           max_size=4))
def test_generated_configs(top, prof):
    """A config of any keys and values is accepted or refused with one ConfigError (or the
    path error of a ``~user`` that does not exist) naming its line; never another exception."""
    from engine.sessions.profiles import parse_config

    text = "".join(f"{k} = {_toml_value(v)}\n" for k, v in top.items())
    text += "[profiles.p]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in prof.items())
    try:
        parse_config(text)
    except EngineError as e:
        assert str(e) and "\n" not in str(e).strip()


# ---------------------------------------------------------------------------- GGUF headers
@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory) -> bytes:
    from gguffile import write_gguf

    return write_gguf(tmp_path_factory.mktemp("gguf") / "m.gguf").read_bytes()


@SETTINGS
@given(edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.none() | st.integers(0, 600))
def test_generated_gguf_headers(tmp_path_factory, small_gguf, edits, cut):
    """A GGUF header with bytes changed or cut short: a parameter count or one ModelLoadError."""
    from engine.errors import ModelLoadError
    from engine.lm.preflight import gguf_params

    data = bytearray(small_gguf)
    for at, b in edits:
        data[at % len(data)] = b
    if cut is not None:
        data = data[:cut]
    p = tmp_path_factory.mktemp("g") / "m.gguf"
    p.write_bytes(bytes(data))
    try:
        params, tensors = gguf_params(p)
    except ModelLoadError as e:
        assert "m.gguf" in str(e)
        return
    assert params >= 0 and tensors >= 0


# ---------------------------------------------------------------------------- the TUI's own files
_SAMPLING = ["temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens",
             "stop", "banned_ids", "seed", "zzz"]
_SETTINGS_TOP = ["version", "sampling", "sampling_set", "user_timeouts", "export_dir",
                 "system_prompt", "zzz"]


@SETTINGS
@given(top=st.dictionaries(st.sampled_from(_SETTINGS_TOP), _value, max_size=5),
       sampling=st.dictionaries(st.sampled_from(_SAMPLING), _value, max_size=4),
       keep_version=st.booleans())
def test_generated_settings_files(tmp_path_factory, top, sampling, keep_version):
    """The TUI's saved settings of any shape: applied whole or ignored whole with one warning
    (the app starts either way), never an exception at start-up."""
    from app.settings import AppSettings
    from app.settings_file import load_into

    doc = dict(top)
    if keep_version:
        doc.update(version=1, export_dir=doc.get("export_dir", "x"))
    doc["sampling"] = sampling if "sampling" not in top else top["sampling"]
    p = tmp_path_factory.mktemp("set") / "settings.json"
    p.write_bytes(_dumps(doc).encode("utf-8", "surrogatepass"))
    s = AppSettings()
    before = (s.sampling, dict(s.timeouts), s.export_dir, s.system_prompt)
    warning = load_into(s, p)
    assert isinstance(warning, str)
    if warning:
        assert (s.sampling, dict(s.timeouts), s.export_dir, s.system_prompt) == before


@SETTINGS
@given(doc=_value | st.dictionaries(_text, _value, max_size=4))
def test_generated_keymaps(tmp_path_factory, doc):
    from app.keymap import load_keymap

    p = tmp_path_factory.mktemp("km") / "keymap.json"
    p.write_bytes(_dumps(doc).encode("utf-8", "surrogatepass"))
    keys, why = load_keymap(p)
    assert isinstance(keys, dict) and (why is None or (not keys and isinstance(why, str)))


_SUITE_FIELDS = ["suite", "id", "kind", "prompt", "system", "document", "reference", "turns",
                 "meta", "zzz"]


@SETTINGS
@given(rows=st.lists(st.dictionaries(st.sampled_from(_SUITE_FIELDS),
                                     _value | st.sampled_from(["chat", "qa", "prose", "s"]),
                                     max_size=6), min_size=1, max_size=4))
def test_generated_suites(tmp_path_factory, rows):
    """A bench suite of any rows: loaded, or one InputError naming the line; never another."""
    from engine.bench.suite import load_suite

    p = tmp_path_factory.mktemp("suite") / "s.jsonl"
    _write(p, [_dumps(r) for r in rows])
    try:
        load_suite(str(p))
    except EngineError as e:
        assert "s.jsonl" in str(e) or "suite" in str(e)


# ---------------------------------------------------------------------------- declared bounds
@SETTINGS
@given(data=st.data(), v=_value)
def test_every_declared_bound_judges_any_value(data, v):
    """Every bounded setting (the one check behind options, form fields, profiles and the saved
    settings) answers any value with a reason or None: an integer past a float's range or past
    the int-string limit, NaN, a surrogate, a nested list. It never raises."""
    from test_bounds_agree import all_fields

    cls, name, bound = data.draw(st.sampled_from(all_fields()))
    for w in (v, 10 ** 4400, -(10 ** 4400), [10 ** 4400]):  # hypothesis cannot print these
        why = bound.why_not(w)
        assert why is None or (isinstance(why, str) and why)


# ---------------------------------------------------------------------------- the sessions database
_DB_COLUMNS = {
    "sessions": ["name", "created", "updated", "model_id", "weights_hash", "system", "sampling",
                 "head_branch", "model_spec"],
    "branches": ["parent", "fork_turn", "created", "conv_ids", "live_from", "snapshot"],
    "turns": ["idx", "user", "user_ids", "answer", "answer_ids", "metrics", "created", "prev",
              "source", "fork_at", "how", "state", "infos"],
}
_DB_VALUES = st.sampled_from([b"\x00\xff\x01", b"", 2 ** 62, -1, 0, 7, 1.5, -1e300, "not json",
                              "{}", "[1, 2]", '{"temperature": "hot"}', "\x1b]52;c;SGVsbG8=\x07[/]",
                              "", "null", None])


@settings(SETTINGS, max_examples=25)
@given(edits=st.lists(st.tuples(st.sampled_from(sorted(_DB_COLUMNS)), st.data()), min_size=1,
                      max_size=3))
def test_generated_sessions_database_values(tmp_path_factory, monkeypatch, capfd, edits):
    """A sessions database written by something else (sqlite keeps any type in any column): a
    value of another type, a blob that is not token ids, text that is not JSON, a foreign id. The
    sessions command lists and shows it, or says what is wrong, in one line; never a traceback."""
    import sqlite3

    from app.cli import main
    from engine.sessions.store import SavedTurn, SessionStore

    folder = tmp_path_factory.mktemp("sess")
    monkeypatch.setenv("TOKENFORGE_SESSIONS", str(folder))
    st_ = SessionStore()
    st_.create("s1", "m", "h", None, {})
    st_.save_turn("s1", 0, SavedTurn("Hello", [1, 2], "Hi", [3]), [1, 2, 3], 0, model_id="m",
                  weights_hash="h", sampling={})
    path = st_.path
    st_.close()
    db = sqlite3.connect(path)
    for table, d in edits:
        col = d.draw(st.sampled_from(_DB_COLUMNS[table]))
        try:
            db.execute(f"UPDATE {table} SET {col} = ?", (d.draw(_DB_VALUES),))
            db.commit()
        except sqlite3.Error:  # a NOT NULL or UNIQUE column refusing the value
            db.rollback()
    db.close()
    capfd.readouterr()
    for argv in (["sessions", "list"], ["sessions", "show", "s1"], ["sessions", "show", "s1", "--json"]):
        code = main(argv)
        out, err = capfd.readouterr()
        assert code in (0, 1, 2) and "Traceback" not in out + err, (argv, out + err)
        assert is_inert(out + err, multiline=True)
