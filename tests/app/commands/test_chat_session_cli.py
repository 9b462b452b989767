"""`tokenforge chat --session NAME` across two real processes: the second one restores the KV
snapshot and its --json shows the turn prefilled only its new tokens."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # starts real processes (the fast loop skips them)


def _chat(tiny_dir, prompt, env):
    cmd = [sys.executable, "-m", "app.cli", "chat", "--model", str(tiny_dir), "--session", "notes",
           "--prompt", prompt, "--temperature", "0", "--max-new-tokens", "5", "--json",
           "--alternatives", "0"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout), p.stderr


def test_session_continues_in_a_new_process(tiny_dir, tmp_path):
    env = {**os.environ, "TOKENFORGE_SESSIONS": str(tmp_path / "sessions")}
    first, _ = _chat(tiny_dir, "Hello there, how are you today?", env)
    assert first["session"] == "notes" and first["restored"] == "new"
    second, err = _chat(tiny_dir, "Fine.", env)
    assert second["restored"] == "snapshot" and "KV restored from snapshot" in err
    history = first["prompt_tokens"] + first["new_tokens"]
    assert second["restored_tokens"] == history - 1
    assert second["prefill_tokens"] < 15 < history  # only the new turn (+ the last answer token)
    assert second["prompt_tokens"] == second["restored_tokens"] + second["prefill_tokens"]
    # what was saved
    from engine.sessions.store import SessionStore

    st = SessionStore(tmp_path / "sessions" / "sessions.db")
    assert [t.user for t in st.get("notes").turns] == ["Hello there, how are you today?", "Fine."]


@pytest.mark.slow
def test_full_disk_keeps_the_session_and_says_so_in_one_line(tiny_dir, tmp_path):
    """On a full disk `chat --session` prints one error line naming the database (no
    traceback), exits non-zero, and leaves the healthy database where and as it was: once space
    is freed the session continues with its history."""
    import hashlib

    from smalldisk import fill, small_disk

    with small_disk(tmp_path / "disk", "4m") as disk:
        env = {**os.environ, "TOKENFORGE_SESSIONS": str(disk)}
        _chat(tiny_dir, "Hello there, how are you today?", env)
        db = disk / "sessions.db"
        before = hashlib.sha256(db.read_bytes()).hexdigest()
        filler = fill(disk)
        cmd = [sys.executable, "-m", "app.cli", "chat", "--model", str(tiny_dir), "--session",
               "notes", "--prompt", "Fine.", "--temperature", "0", "--max-new-tokens", "5",
               "--json", "--alternatives", "0"]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode != 0
        assert "Traceback" not in p.stderr
        errors = [ln for ln in p.stderr.splitlines() if "error" in ln.lower()]
        assert len(errors) == 1 and "disk is full" in errors[0] and str(db) in p.stderr.replace("\n", "")
        assert hashlib.sha256(db.read_bytes()).hexdigest() == before
        assert not [q for q in disk.iterdir() if ".bad-" in q.name]
        filler.unlink()
        again, _ = _chat(tiny_dir, "Fine.", env)
        assert again["restored"] != "new"
