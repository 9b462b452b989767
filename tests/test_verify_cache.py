"""``--verify-cache``: bit-rot that keeps a file's size and mtime passes the everyday check (by
design: it trusts size + mtime) and is caught by the full one, which moves the entry aside; a
damaged KV snapshot is deleted. The check runs by itself after an unclean shutdown."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("TOKENFORGE_CACHE", str(root))
    monkeypatch.delenv("TOKENFORGE_SESSIONS", raising=False)
    return root


def _rot(p: Path) -> None:
    """Flip one byte in the middle, keeping size and mtime (what bit-rot looks like)."""
    st = p.stat()
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x10
    p.write_bytes(bytes(b))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_bit_rot_in_a_model_is_found_only_by_the_full_check(cache):
    from engine.integrity import BROKEN, check_dir, record_dir
    from engine.verify import verify_cache

    entry = cache / "models" / "m-0001"
    entry.mkdir(parents=True)
    (entry / "model.safetensors").write_bytes(os.urandom(1 << 16))
    (entry / "config.json").write_text("{}")
    record_dir(entry)
    whole = cache / "models" / "m-0002"
    whole.mkdir()
    (whole / "model.safetensors").write_bytes(b"x" * 1000)
    record_dir(whole)
    _rot(entry / "model.safetensors")
    assert check_dir(entry) is None  # size and mtime as recorded: trusted day to day
    res = verify_cache()
    assert res.checked == 2 and len(res.problems) == 1
    assert "m-0001" in res.problems[0] and "recorded hash" in res.problems[0]
    assert "moved aside" in res.message()
    assert not entry.exists() and (cache / "models" / ("m-0001" + BROKEN)).is_dir()
    assert whole.is_dir()


def test_damaged_snapshot_is_deleted_a_whole_one_kept(cache, tokenizer):
    from engine.lm.chat import ChatSession
    from engine.lm.config import SamplingConfig
    from engine.lm.tiny import tiny_llama
    from engine.sessions.snapshot import SnapshotStore
    from engine.verify import verify_cache

    s = ChatSession(tiny_llama(tokenizer), sampling=SamplingConfig(max_new_tokens=3, temperature=0.0))
    snaps = SnapshotStore(cache / "sessions" / "snapshots", 1 << 30)
    s.send("Hello")
    a = snaps.save(s.fwd, s.cache, s.ids[:s.fwd.cache_len(s.cache)], "w", "float32")
    s.send("Again")
    b = snaps.save(s.fwd, s.cache, s.ids[:s.fwd.cache_len(s.cache)], "w", "float32")
    b_bytes = snaps.path(b).read_bytes()
    _rot(snaps.path(a))
    res = verify_cache()
    assert res.checked == 2 and len(res.problems) == 1 and "checksum" in res.problems[0]
    assert not snaps.path(a).exists() and snaps.path(b).read_bytes() == b_bytes


MARK = """
import os, sys
from engine.verify import mark_running
print(mark_running(), flush=True)
if sys.argv[1] == "kill":
    os._exit(9)  # no clean-up at all, as after kill -9
"""


def test_unclean_shutdown_is_noticed_once(cache):
    def run(how: str) -> str:
        p = subprocess.run([sys.executable, "-c", MARK, how], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, env=os.environ.copy())
        return p.stdout.strip()

    assert run("clean") == "False"
    assert run("clean") == "False"  # a clean exit leaves no mark
    assert run("kill") == "False"
    assert run("clean") == "True"   # the killed run's mark was not released
    assert run("clean") == "False"  # and it is checked once


def test_verify_cache_flag(cache, capsys):
    from app.cli import main

    assert main(["--verify-cache"]) == 0
    assert "verified 0 cached file(s)" in capsys.readouterr().err
