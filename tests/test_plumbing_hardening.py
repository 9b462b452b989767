"""The hardening plumbing on real files: bounded JSON, integrity records and self-healing cache
entries, lock files between real processes, start-up cleanup of own stale temporary files,
atomic replace keeping file modes, memory bounds, big exact counts, complete-by-parsing results."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import atomic, integrity
from engine.bounded_json import BadJSON, complete_line, iter_jsonl, loads
from engine.budget import Bound, tree_rollout_bound
from engine.errors import EngineError, InputError
from engine.locks import FileLock, LockHeld, is_held, lock_path
from engine.tempclean import clean_stale, is_own_temp

ROOT = Path(__file__).resolve().parents[1]


# ---- bounded JSON -------------------------------------------------------------------------------
def test_deep_json_is_one_named_error_not_a_recursion(tmp_path):
    p = tmp_path / "suite.jsonl"
    p.write_text('{"a": 1}\n' + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(BadJSON, match=r"suite.jsonl line 2: nested 100000 levels deep; the limit is 64"):
        list(iter_jsonl(p))
    rows = list(iter_jsonl(p, strict=False))
    assert rows[0] == (1, {"a": 1}, None) and rows[1][1] is None and "line 2" in rows[1][2]
    # brackets inside strings are not nesting
    assert loads(json.dumps({"s": "[" * 1000}), "x") == {"s": "[" * 1000}


def test_non_utf8_file_names_its_line(tmp_path):
    p = tmp_path / "rows.jsonl"
    p.write_bytes(b'{"a": 1}\n{"b": "\xff"}\n')
    with pytest.raises(BadJSON, match="rows.jsonl line 2: not UTF-8"):
        list(iter_jsonl(p))


def test_a_line_is_complete_when_it_parses():
    assert complete_line(b'{"key": "a"}') == {"key": "a"}          # no newline needed
    assert complete_line(b'{"key": "a"') is None and complete_line(b"[1]") is None


def test_results_last_line_without_newline_is_kept(tmp_path):
    from engine.advtok.records import read_lines

    p = tmp_path / "results.jsonl"
    p.write_text('{"id": "a"}\n{"id": "b"}', encoding="utf-8")   # complete, newline missing
    recs, _ = read_lines(p, repair=True)
    assert [r["id"] for r in recs] == ["a", "b"] and p.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    p.write_text('{"id": "a"}\n{"id": "b', encoding="utf-8")     # torn: cut, row redone
    recs, notes = read_lines(p, repair=True)
    assert [r["id"] for r in recs] == ["a"] and p.read_text() == '{"id": "a"}\n' and notes


# ---- integrity records ----------------------------------------------------------------------------
def _safetensors_dir(d: Path) -> Path:
    """A converted-model entry without its integrity record: a real (tiny) model's weights and
    config, so adopting it can check every tensor's shape against the config."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d.mkdir()
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(str(d))
    (d / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    return d


def test_model_entry_heals_on_every_kind_of_damage(tmp_path):
    from engine.lm.model import cached_model_problem

    d = _safetensors_dir(tmp_path / "m")
    assert cached_model_problem(d) is None                       # legacy entry: adopted…
    assert (d / integrity.DIR_RECORD).exists()                   # …with a record written now
    rec = json.loads((d / integrity.DIR_RECORD).read_text())
    assert rec["files"]["model.safetensors"]["size"] == (d / "model.safetensors").stat().st_size
    w = d / "model.safetensors"
    data = w.read_bytes()
    with open(w, "r+b") as fh:                                   # overwritten bytes, same size
        fh.seek(len(data) - 16)
        fh.write(b"\x7f" * 8)
    os.utime(w, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert "recorded hash" in cached_model_problem(d)
    w.write_bytes(data)
    assert cached_model_problem(d) is None                       # same bytes again: fine
    w.write_bytes(data[: len(data) // 2])
    assert "truncated" in cached_model_problem(d)
    w.write_bytes(data)
    (d / "tokenizer_config.json").unlink()
    assert "tokenizer_config.json missing" in cached_model_problem(d)
    moved = integrity.quarantine(d)
    assert moved.name == "m.broken" and not d.exists() and cached_model_problem(d) == "absent"
    d2 = _safetensors_dir(tmp_path / "m")
    assert integrity.quarantine(d2) == moved and not d2.exists()  # one broken copy is kept


def test_legacy_truncated_weights_are_not_adopted(tmp_path):
    from engine.lm.model import cached_model_problem

    d = _safetensors_dir(tmp_path / "m")
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    assert "truncated" in cached_model_problem(d) and not (d / integrity.DIR_RECORD).exists()


def test_file_entry_record_and_foreign_record(tmp_path):
    p = tmp_path / "v.json"
    integrity.write_file(p, b'{"x": 1}')
    assert integrity.check_file(p) is None
    integrity.file_record_path(p).write_text('{"format": "other"}')
    assert integrity.check_file(p) == "integrity record of another format"
    integrity.file_record_path(p).write_text("[" * 5000)
    assert "unreadable" in integrity.check_file(p)


def test_corrupt_vocabulary_of_the_right_json_shape_is_moved_aside_and_rebuilt(tmp_path, monkeypatch):
    from tests.tokbuild import byte_bpe_tokenizer
    from engine.advtok.vocab import cache_path, load_vocab

    monkeypatch.setenv("TOKENFORGE_CACHE", str(tmp_path))
    tok = byte_bpe_tokenizer(300)
    a = load_vocab(tok)
    path = cache_path(a.hash)
    obj = json.loads(path.read_text())
    obj["tokens"] = [{"not": "hex"}] * len(obj["tokens"])       # valid JSON, wrong shape
    path.write_text(json.dumps(obj))
    notes = []
    b = load_vocab(tok, progress=lambda p: notes.append(p.metrics.get("warning")))
    assert b.token_bytes == a.token_bytes and not b.from_cache
    assert "moved aside" in b.cache_note and (path.parent / (path.name + ".broken")).exists()
    assert integrity.check_file(path) is None and load_vocab(tok).from_cache


# ---- locks ----------------------------------------------------------------------------------------
@pytest.mark.slow  # a real process
def test_lock_held_by_another_process_names_it(tmp_path):
    target = tmp_path / "results.jsonl"
    code = ("import sys; from engine.locks import FileLock\n"  # held until the test kills it
            f"with FileLock({str(target)!r}, 'x'):\n    print('held', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert is_held(target)
        with pytest.raises(LockHeld, match=rf"in use by process {proc.pid} "):
            FileLock(target, "results file").acquire()
    finally:
        proc.kill()
        proc.wait()
    with FileLock(target, "results file"):       # the dead holder's lock is free at once
        assert lock_path(target).exists()
    assert not lock_path(target).exists() and not is_held(target)


# ---- start-up cleanup -----------------------------------------------------------------------------
def test_only_own_stale_temporaries_are_removed(tmp_path):
    old = time.time() - 3600
    stale_file = tmp_path / ".v.json.tokenforge-ab_cd123.tmp"
    stale_file.write_bytes(b"x" * 1000)
    stale_dir = tmp_path / ".model-1.k3j_9zq0.tmp"                # mkstemp name, before the marker
    stale_dir.mkdir()
    (stale_dir / "model.safetensors").write_bytes(b"y" * 5000)
    fresh = tmp_path / ".w.json.tokenforge-zzzzzzzz.tmp"
    fresh.write_bytes(b"z")
    foreign = tmp_path / ".notes.tmp"
    foreign.write_bytes(b"keep")
    mine = tmp_path / "results.jsonl"
    mine.write_bytes(b"keep")
    for p in (stale_file, stale_dir / "model.safetensors", stale_dir, foreign, mine):
        os.utime(p, (old, old))
    cutoff = time.time() - 60
    res = clean_stale([tmp_path], older_than=cutoff)
    assert sorted(p.name for p in res.removed) == sorted([stale_file.name, stale_dir.name])
    assert res.freed == 6000 and "freed 5.9 KiB" in res.message()
    assert fresh.exists() and foreign.exists() and mine.exists()
    assert not is_own_temp("model.safetensors") and is_own_temp(fresh.name)


def test_a_temporary_whose_target_is_locked_is_left_alone(tmp_path):
    tmp = tmp_path / ".m.tokenforge-abcdefgh.tmp"
    tmp.mkdir()
    os.utime(tmp, (1, 1))
    with FileLock(tmp_path / "m", "model cache"):
        assert clean_stale([tmp_path], older_than=time.time()).removed == []
    assert clean_stale([tmp_path], older_than=time.time()).removed == [tmp]


def test_atomic_replace_keeps_the_mode_and_names_its_temporaries(tmp_path):
    p = tmp_path / "secret.json"
    p.write_text("{}")
    p.chmod(0o600)
    atomic.write_json(p, {"a": 1})
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 and json.loads(p.read_text()) == {"a": 1}
    assert atomic.tmp_prefix("x").startswith(".x." + atomic.TMP_MARK)


def test_cache_env_naming_a_file_is_one_error(tmp_path, monkeypatch):
    from engine.paths import cache_dir

    f = tmp_path / "file"
    f.write_text("x")
    monkeypatch.setenv("TOKENFORGE_CACHE", str(f))
    with pytest.raises(EngineError, match="is a file, not a folder"):
        cache_dir("models")


# ---- memory bounds and counts -------------------------------------------------------------------
def test_bound_limit_is_the_largest_value_that_fits():
    b = Bound("--rollouts", 1000, "per rollout 1000 B")
    lim = b.limit(usable=10**6)
    b.check(lim, usable=10**6)
    with pytest.raises(InputError, match=r"--rollouts 1,001 needs .* the limit is --rollouts ≤ 1,000"):
        b.check(lim + 1, usable=10**6)


def test_tree_bound_follows_the_model_config():
    from types import SimpleNamespace

    cfg = SimpleNamespace(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                          hidden_size=576, vocab_size=49152)
    b = tree_rollout_bound(SimpleNamespace(config=cfg, dtype="float32"), 20, 50)
    kv = 2 * 30 * 3 * 64 * 4
    assert b.per_unit == 70 * kv + 50 * 49152 * 8


def test_counts_beyond_4300_digits_print():
    from engine.advtok.mdd import allow_digits, count_label

    n = 7 ** 20_000
    allow_digits(n)
    assert len(str(n)) == 16_902 and json.loads(json.dumps({"c": n}))["c"] == n
    assert count_label(n) in ("~10^16901", "~10^16902") and count_label(12345) == "12345"
