"""Paths, caches and sessions under hostile input: ``~nosuchuser`` paths, TOKENFORGE_SESSIONS as a
file or a folder, an option refused before the model loads, a cache entry without its integrity
record adopted only when its shapes fit its config, a snapshot path that is a folder, stale
temporary files deep in the cache, and standard input read with a bound."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


# ---- ~user ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["--config", "~nosuchuser4242/c.toml", "chat", "--prompt", "hi"],
    ["tokenize", "hi", "--out", "~nosuchuser4242/x.json"],
    ["tokenize", "hi", "--model", "~nosuchuser4242/model"],
    ["chat", "--prompt", "hi", "--model", "~nosuchuser4242/model"],
])
def test_unknown_user_in_a_path_is_one_clear_error(argv, capsys, monkeypatch):
    import engine.lm.model as model_mod
    from app.cli import main

    monkeypatch.setattr(model_mod, "bundled_gguf", lambda: pytest.fail("resolved past the path"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "RuntimeError" not in err
    assert "there is no user named 'nosuchuser4242'" in err


def test_expand_user_keeps_other_paths():
    from engine.paths import expand_user

    assert expand_user("/a/b") == Path("/a/b") and expand_user("rel/x") == Path("rel/x")
    assert expand_user("~/x") == Path.home() / "x"
    with pytest.raises(InputError, match="--out: cannot expand ~nosuchuser4242"):
        expand_user("~nosuchuser4242/x", "--out")


# ---- TOKENFORGE_SESSIONS -------------------------------------------------------------------------
def test_sessions_variable_names_a_file_or_a_folder(tmp_path, monkeypatch):
    from engine.sessions.store import SessionStore, sessions_db, sessions_dir

    monkeypatch.setenv("TOKENFORGE_SESSIONS", str(tmp_path / "folder"))  # a new folder
    assert sessions_db() == tmp_path / "folder" / "sessions.db"
    assert sessions_dir() == tmp_path / "folder" and (tmp_path / "folder").is_dir()
    existing = tmp_path / "notes.db"  # an existing file: the database itself
    existing.write_bytes(b"")
    monkeypatch.setenv("TOKENFORGE_SESSIONS", str(existing))
    assert sessions_db() == existing and sessions_dir() == tmp_path
    st = SessionStore()
    st.create("s1", "m", "h", None, {})
    st.close()
    assert SessionStore(existing).exists("s1")
    new = tmp_path / "sub" / "mine.sqlite"  # a new file name (it has a suffix)
    monkeypatch.setenv("TOKENFORGE_SESSIONS", str(new))
    assert sessions_db() == new and sessions_dir() == tmp_path / "sub"
    SessionStore().close()
    assert new.is_file()


# ---- refused before the model loads --------------------------------------------------------------
def test_negative_context_size_is_refused_before_loading(capsys, monkeypatch):
    import engine.lm.model as model_mod
    from app.cli import main

    monkeypatch.setattr(model_mod, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    assert main(["chat", "--prompt", "hi", "--context-size", "-5"]) == 2
    err = capsys.readouterr().err
    assert "--context-size" in err and "-5" in err and "Traceback" not in err


# ---- a cache entry without its integrity record ----------------------------------------------------
def _saved(lm, folder: Path) -> Path:
    lm.model.save_pretrained(str(folder))
    lm.tokenizer.save_pretrained(str(folder))
    return folder


def test_entry_without_record_is_adopted_only_when_shapes_fit(tokenizer, tmp_path):
    from engine.integrity import DIR_RECORD
    from engine.lm.model import cached_model_problem
    from engine.lm.tiny import tiny_llama

    good = _saved(tiny_llama(tokenizer, seed=0), tmp_path / "good")
    assert cached_model_problem(good) is None and (good / DIR_RECORD).is_file()  # adopted
    bad = _saved(tiny_llama(tokenizer, seed=0), tmp_path / "bad")
    other = _saved(tiny_llama(tokenizer, seed=1, hidden=32, heads=2, kv_heads=1), tmp_path / "o")
    (bad / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    problem = cached_model_problem(bad)  # a whole safetensors file, of another model's shapes
    assert problem is not None and "shape" in problem and "config says" in problem
    assert not (bad / DIR_RECORD).exists()  # no record written for it


def test_converted_entry_of_another_shape_is_moved_aside_and_rebuilt(tokenizer, tmp_path, monkeypatch):
    import engine.lm.model as model_mod
    from engine.integrity import BROKEN
    from engine.lm.tiny import tiny_llama

    target = tmp_path / "models" / "x-0123"
    _saved(tiny_llama(tokenizer, seed=0, hidden=32, heads=2, kv_heads=1), target)
    good = _saved(tiny_llama(tokenizer, seed=0), tmp_path / "src")
    (target / "config.json").write_bytes((good / "config.json").read_bytes())  # config ≠ weights
    monkeypatch.setattr(model_mod, "converted_dir", lambda gguf: target)
    built = []

    def convert(gguf, tgt, progress, cancel):
        built.append(tgt)
        from engine.atomic import atomic_dir
        from engine.integrity import record_dir

        with atomic_dir(tgt) as tmp:
            _saved(tiny_llama(tokenizer, seed=0), tmp)
            record_dir(tmp)

    monkeypatch.setattr(model_mod, "_convert_locked", convert)
    import engine.lm.preflight as preflight

    checked = []  # the converter is a stand-in here, so the GGUF it would read is not written
    monkeypatch.setattr(preflight, "check_conversion_memory", checked.append)
    notes = []
    assert model_mod._convert_gguf(tmp_path / "x.gguf", lambda p: notes.append(p.message), None) == target
    assert checked == [tmp_path / "x.gguf"]  # the memory preflight ran before the rebuild
    assert built == [target] and (target.parent / (target.name + BROKEN)).is_dir()
    assert any("moved aside" in n and "shape" in n for n in notes)
    assert model_mod.cached_model_problem(target) is None


# ---- the snapshot store, a folder where a snapshot should be ---------------------------------------
def test_snapshot_path_that_is_a_folder(tokenizer, tmp_path):
    from engine.lm.chat import ChatSession
    from engine.lm.config import SamplingConfig
    from engine.lm.tiny import tiny_llama
    from engine.sessions.snapshot import SnapshotStore, snapshot_key

    lm = tiny_llama(tokenizer)
    s = ChatSession(lm, sampling=SamplingConfig(max_new_tokens=3, temperature=0.0))
    s.send("Hello")
    held = s.ids[:s.fwd.cache_len(s.cache)]
    snaps = SnapshotStore(tmp_path / "snap", 1 << 30)
    key = snapshot_key("w", "float32", held)
    (snaps.path(key) / "inner").mkdir(parents=True)  # a folder under the snapshot's name
    assert snaps.load(s.fwd, held, "w", "float32") == (None, "snapshot rejected (not a regular "
                                                      "file); recomputed")
    assert not snaps.path(key).exists()
    (snaps.path(key) / "inner").mkdir(parents=True)
    other = snaps.path("0" * 32)
    other.mkdir()
    assert snaps.save(s.fwd, s.cache, held, "w", "float32") == key and snaps.path(key).is_file()
    snaps.cap_bytes = 1  # the cap skips what is not a snapshot file
    snaps.enforce_cap()
    assert other.is_dir()
    loaded, why = snaps.load(s.fwd, held, "w", "float32")
    assert loaded is None and why == "no snapshot"


# ---- stale temporary files, however deep ------------------------------------------------------------
def test_stale_temp_files_in_snapshot_folders_are_cleaned(tmp_path, monkeypatch):
    from engine.tempclean import clean_cache

    cache, elsewhere = tmp_path / "cache", tmp_path / "mysessions"
    monkeypatch.setenv("TOKENFORGE_CACHE", str(cache))
    monkeypatch.setenv("TOKENFORGE_SESSIONS", str(elsewhere))
    old = time.time() - 3600
    stale = [cache / "sessions" / "snapshots" / ".ab.safetensors.tokenforge-abcd1234.tmp",
             elsewhere / "snapshots" / ".cd.safetensors.tokenforge-efgh5678.tmp"]
    keep = [cache / "sessions" / "snapshots" / "ab.safetensors", elsewhere / "notes.txt"]
    for p in stale + keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * 100)
        os.utime(p, (old, old))
    res = clean_cache()
    assert sorted(res.removed) == sorted(stale) and res.freed == 200
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


# ---- standard input, bounded ----------------------------------------------------------------------------
class _Endless(io.RawIOBase):
    def __init__(self) -> None:
        self.given = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        b[:] = b"y\n" * (len(b) // 2) + b"y" * (len(b) % 2)
        self.given += len(b)
        return len(b)


def test_tokenize_stdin_reads_no_more_than_its_bound(monkeypatch):
    from app.commands.tokenize import _read_text
    from engine.advtok.config import MAX_TEXT_BYTES

    src = _Endless()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(src, 1 << 16)))
    with pytest.raises(InputError, match="standard input is more than"):
        _read_text("-")
    assert src.given <= MAX_TEXT_BYTES + 2 * (1 << 16)  # the bound plus a buffer, never all of it


def test_tokenize_stdin_from_an_endless_pipe_is_refused():
    p = subprocess.Popen([sys.executable, "-m", "app.cli", "tokenize", "-"], cwd=ROOT,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def feed() -> None:  # `yes |`: writes until the reader goes away
        try:
            while True:
                p.stdin.write(b"y\n" * 65536)
        except (BrokenPipeError, OSError, ValueError):
            pass

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    t.join(timeout=300)  # until the reader is gone (stdin is never closed from this side)
    assert not t.is_alive()
    err = p.stderr.read()
    assert p.wait(timeout=60) == 2, err
    for f in (p.stdin, p.stdout, p.stderr):
        try:
            f.close()
        except OSError:
            pass
    assert b"standard input is more than" in err and b"Traceback" not in err
