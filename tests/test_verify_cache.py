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


# ---- the attack actions: judge and replay read the cache (models); report and merge do not -----
def _rotten_model(cache: Path) -> Path:
    from engine.integrity import record_dir

    entry = cache / "models" / "m-0001"
    entry.mkdir(parents=True)
    (entry / "model.safetensors").write_bytes(os.urandom(1 << 12))
    record_dir(entry)
    _rot(entry / "model.safetensors")
    return entry


@pytest.mark.parametrize("argv", [
    ["--verify-cache", "attack", "judge", "none.jsonl", "--judge", "refusal"],  # before `attack`
    ["attack", "judge", "none.jsonl", "--judge", "refusal", "--verify-cache"],
    ["attack", "replay", "none.jsonl", "--row", "1", "--verify-cache"],
])
def test_attack_actions_that_load_models_take_the_flag(cache, capsys, argv):
    from app.cli import main
    from engine.integrity import BROKEN

    entry = _rotten_model(cache)
    assert main(argv) == 2  # the check ran first; then the action's own error
    err = capsys.readouterr().err
    assert "verified 1 cached file(s)" in err and "m-0001" in err and "moved aside" in err
    assert "results file not found: none.jsonl" in err
    assert not entry.exists() and (cache / "models" / ("m-0001" + BROKEN)).is_dir()


@pytest.mark.parametrize("action", ["report", "merge"])
def test_report_and_merge_refuse_the_flag_and_say_why(cache, capsys, action):
    from app.cli import main

    entry = _rotten_model(cache)
    for argv in (["--verify-cache", "attack", action, "r.jsonl"],
                 ["attack", action, "r.jsonl", "--verify-cache"]):
        with pytest.raises(SystemExit) as ei:
            main(argv)
        assert ei.value.code == 2
        err = capsys.readouterr().err
        assert f"attack {action} reads only results files" in err and "Traceback" not in err
    assert entry.is_dir()  # nothing was checked or moved


def _cli(cache: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "TOKENFORGE_CACHE": str(cache)})


@pytest.mark.slow  # real processes (the run mark is per process)
def test_after_an_unclean_shutdown_judge_checks_and_report_does_not(cache):
    """A killed run's mark (unheld) makes the next command that reads the cache run the full
    check; ``attack report`` reads no cache: it neither checks nor takes or clears the mark."""
    from engine.integrity import BROKEN

    entry = _rotten_model(cache)
    (cache / "runs").mkdir()
    stale = cache / "runs" / ".999999999.lock"  # no such process holds it
    stale.write_text("")
    p = _cli(cache, "attack", "report", "none.jsonl")
    assert p.returncode == 2 and "verified" not in p.stderr, p.stderr
    assert stale.exists() and entry.is_dir()
    p = _cli(cache, "attack", "judge", "none.jsonl", "--judge", "refusal")
    assert p.returncode == 2, p.stderr
    assert "the last run did not end cleanly" in p.stderr and "m-0001" in p.stderr
    assert not stale.exists() and (cache / "models" / ("m-0001" + BROKEN)).is_dir()


def test_bit_rot_in_a_rotation_file_is_found(cache):
    """The LaRoSA rotations (cache/sparsity) are checked like every other cache entry."""
    import torch

    from engine.bench.rotation_cache import load_rotations, rotations_path, save_rotations
    from engine.integrity import BROKEN
    from engine.verify import verify_cache

    q = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)))[0]
    path = rotations_path("k1")
    save_rotations(path, "k1", {"attn": [q], "mlp": [q.T.contiguous()]}, tokens=64)
    assert verify_cache().problems == []
    rot, n = load_rotations(path, "k1", 1, 8, ("attn", "mlp"))
    assert n == 64 and torch.equal(rot["attn"][0], q)
    assert load_rotations(path, "k2", 1, 8, ("attn", "mlp")) is None  # another key: not used
    save_rotations(path, "k1", {"attn": [q], "mlp": [q]}, tokens=64)
    _rot(path)
    res = verify_cache()
    assert len(res.problems) == 1 and path.name in res.problems[0]
    assert not path.exists() and (path.parent / (path.name + BROKEN)).exists()
