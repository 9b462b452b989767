"""`chat --session` refuses what it could not save before it answers: a read-only or unreadable
sessions database (one line, no answer printed, nothing left beside the file) and a session
another process is writing (named). Real processes on the tiny model."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from smalldisk import no_dac_override

pytestmark = pytest.mark.slow  # starts real processes (the fast loop skips them)


def _cmd(tiny_dir, *extra):
    return [sys.executable, "-m", "app.cli", "chat", "--model", str(tiny_dir), "--session", "s1",
            "--temperature", "0", "--max-new-tokens", "3", "--alternatives", "0", *extra]


@pytest.mark.parametrize("mode", [0o444, 0o000])
def test_read_only_database_is_refused_before_the_answer(tiny_dir, tmp_path, mode):
    folder = tmp_path / "sessions"
    env = {**os.environ, "TOKENFORGE_SESSIONS": str(folder)}
    first = subprocess.run(_cmd(tiny_dir, "--prompt", "Hello"), capture_output=True, text=True,
                           env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    db = folder / "sessions.db"
    before = db.read_bytes()
    snaps = sorted(p.name for p in (folder / "snapshots").iterdir())
    side = sorted(p.name for p in folder.iterdir())
    db.chmod(mode)
    p = subprocess.run([*no_dac_override(), *_cmd(tiny_dir, "--prompt", "Again")],
                       capture_output=True, text=True, env=env, timeout=300)
    db.chmod(0o644)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stdout == ""  # refused before the model answered (and before it loaded)
    assert "loaded in" not in p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(db) in p.stderr.replace("\n", "")
    assert db.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == side  # no -wal/-shm of mode 444 left
    assert sorted(p.name for p in (folder / "snapshots").iterdir()) == snaps


def test_second_writer_of_a_session_is_told_who_holds_it(tiny_dir, tmp_path):
    env = {**os.environ, "TOKENFORGE_SESSIONS": str(tmp_path / "sessions")}
    repl = subprocess.Popen(_cmd(tiny_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        lock_dir = tmp_path / "sessions" / "locks"
        import time

        deadline = time.monotonic() + 240  # the REPL holds the lock from before its model loads
        while time.monotonic() < deadline and not (lock_dir.is_dir() and any(lock_dir.iterdir())):
            time.sleep(0.1)
        assert lock_dir.is_dir() and any(lock_dir.iterdir())
        p = subprocess.run(_cmd(tiny_dir, "--prompt", "Hi"), capture_output=True, text=True,
                           env=env, timeout=300)
        assert p.returncode == 2 and "Traceback" not in p.stderr and p.stdout == ""
        assert f"process {repl.pid}" in p.stderr and "'s1'" in p.stderr
    finally:
        repl.communicate("/exit\n", timeout=300)
    again = subprocess.run(_cmd(tiny_dir, "--prompt", "Hi"), capture_output=True, text=True,
                           env=env, timeout=300)
    assert again.returncode == 0, again.stderr
