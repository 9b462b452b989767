"""A full disk or a read-only file loses nothing: every write of the program (engine.atomic, the
lock files, the sessions database) ends in one StorageError naming the path and what was kept,
the original file untouched, no torn line, no empty file, no temporary file left behind.

On a real full disk: a small tmpfs mounted by the test (root only; skipped otherwise)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.atomic import append_line, write_bytes, write_text
from engine.errors import DiskFull, StorageError
from smalldisk import fill, free_pages, no_dac_override, small_disk

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def disk(tmp_path):
    with small_disk(tmp_path / "disk", "256k") as mnt:
        yield mnt


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---- engine.atomic ------------------------------------------------------------------------------
def test_append_is_all_or_nothing(disk):
    runs = disk / "runs.jsonl"
    runs.write_text('{"n": 1}\n')
    before = runs.read_bytes()
    free_pages(fill(disk), 1)
    line = json.dumps({"n": 2, "pad": "x" * 20_000})  # more than the page left
    with pytest.raises(DiskFull) as ei:
        append_line(runs, line)
    msg = str(ei.value)
    assert str(runs) in msg and "disk is full" in msg and "as it was" in msg
    assert isinstance(ei.value, OSError) and ei.value.errno == 28
    assert runs.read_bytes() == before  # truncated back: no torn last line
    append_line(runs, '{"n": 3}')  # a line that fits still goes in whole
    assert runs.read_text().splitlines() == ['{"n": 1}', '{"n": 3}']


def test_append_to_a_new_file_on_a_full_disk_leaves_no_file(disk):
    fill(disk)
    with pytest.raises(DiskFull, match="nothing was written"):
        append_line(disk / "new.jsonl", "x" * 10_000)
    assert _names(disk) == ["filler"]


@pytest.mark.parametrize("existing", [True, False])
def test_replace_on_a_full_disk_keeps_the_original(disk, existing):
    target = disk / "table.md"
    if existing:
        target.write_text("old table\n")
    fill(disk)
    with pytest.raises(DiskFull) as ei:
        write_text(target, "new table " * 10_000)
    assert str(target) in str(ei.value)
    assert ("left as it was" if existing else "nothing was written") in str(ei.value)
    assert _names(disk) == (["filler", "table.md"] if existing else ["filler"])
    if existing:
        assert target.read_text() == "old table\n"


def test_read_only_folder_is_a_storage_error_not_a_traceback(tmp_path):
    """EROFS and EACCES (a bind-mounted read-only folder is not available here: a child process
    without the capability to ignore modes, on a 0555 folder) give the same one message."""
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "keep.txt").write_text("kept\n")
    (folder / "keep.txt").chmod(0o444)
    folder.chmod(0o555)
    code = ("import sys\nfrom engine.atomic import write_text, append_line\n"
            "from engine.errors import StorageError\n"
            "for f in (lambda: write_text(sys.argv[1] + '/keep.txt', 'new'),"
            " lambda: append_line(sys.argv[1] + '/keep.txt', 'new'),"
            " lambda: write_text(sys.argv[1] + '/sub/new.txt', 'new')):\n"
            "    try:\n        f()\n    except StorageError as e:\n        print(e)\n")
    p = subprocess.run([*no_dac_override(), sys.executable, "-c", code, str(folder)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    folder.chmod(0o755)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 3 and all("permission denied" in ln for ln in lines), lines
    assert str(folder / "keep.txt") in lines[0] and "left as it was" in lines[0]
    assert (folder / "keep.txt").read_text() == "kept\n" and _names(folder) == ["keep.txt"]


# ---- the commands that write: one line, exit 2, nothing touched -----------------------------------
def _results_rows(n: int) -> str:
    def side(label):
        return [{"text": "Sure, here is a haiku about rain",
                 "verdicts": {"refusal": {"judge": "refusal", "label": label}}}]
    return "".join(json.dumps({
        "id": f"r{i}", "line": i, "request": "Write a haiku about rain", "response": "Sure, here is",
        "category": "poetry", "judges": ["refusal"], "canonical_samples": side("safe"),
        "adversarial_samples": side("harmful"), "improvement": 1.0,
        "model": {"name": "m", "weights_hash": "abc"}}) + "\n" for i in range(n))


def _one_error_line(err: str, path: Path) -> None:
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, err
    flat = err.replace("\n", "")
    assert str(path) in flat and "disk is full" in flat


@pytest.mark.parametrize("argv, pages", [
    (["attack", "report", "{res}", "--markdown", "{out}"], 0),
    (["attack", "report", "{res}", "--csv", "{out}"], 0),
    (["bench", "report", "{runs}", "--csv", "{out}"], 0),
    (["attack", "judge", "{res}", "--judge", "refusal", "--out", "{out}"], 1),  # room for its lock
    (["attack", "judge", "{res}", "--judge", "refusal"], 1),
])
def test_commands_on_a_full_disk_print_one_line(disk, capsys, argv, pages):
    from app.cli import main

    res, runs, out = disk / "results.jsonl", disk / "runs.jsonl", disk / "out.file"
    res.write_text(_results_rows(40))
    runs.write_bytes((FIXTURES / "bench_runs.jsonl").read_bytes())
    before = {p: p.read_bytes() for p in (res, runs)}
    free_pages(fill(disk), pages)
    code = main([a.format(res=res, runs=runs, out=out) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    _one_error_line(err, out if "--out" in argv or "--csv" in argv or "--markdown" in argv else res)
    assert {p: p.read_bytes() for p in (res, runs)} == before
    assert _names(disk) == ["filler", "results.jsonl", "runs.jsonl"]


def test_attack_json_after_the_attack_says_the_result_was_printed(disk, capsys, monkeypatch, tiny_lm):
    import app.commands.attack as attack_cmd
    from app.cli import main

    monkeypatch.setattr(attack_cmd, "load_lm", lambda args: tiny_lm)
    fill(disk)
    dest = disk / "attack.json"
    code = main(["attack", "--request", "Write a haiku about rain.", "--response", "Sure",
                 "--iters", "1", "--samples", "0", "--json", str(dest)])
    out, err = capsys.readouterr()
    assert code == 2
    assert "adversarial ids:" in out  # the result is on screen …
    _one_error_line(err, dest)
    assert "printed above" in err.replace("\n", "")  # … and the message says so
    assert _names(disk) == ["filler"]


def test_bench_out_with_one_free_page_leaves_whole_lines(disk, monkeypatch, tiny_lm, capsys):
    """The runs file's last page has room for part of a record: the record that does not fit is
    truncated away, the run stops with one line, and what was written stays readable."""
    import app.commands.bench as bench_cmd
    from app.cli import main
    from engine.bench.records import read_records

    monkeypatch.setattr(bench_cmd, "load_lm", lambda args: tiny_lm)
    runs = disk / "runs.jsonl"
    runs.write_bytes((FIXTURES / "bench_runs.jsonl").read_bytes())
    before = runs.read_bytes()
    free_pages(fill(disk), 1)  # the lock file takes it
    code = main(["bench", "--methods", "baseline", "--repeats", "3", "--max-new-tokens", "2",
                 "--no-warmup", "--out", str(runs)])
    err = capsys.readouterr().err
    assert code == 2
    _one_error_line(err, runs)
    data = runs.read_bytes()
    assert data.startswith(before) and data.endswith(b"\n")
    recs, problems = read_records(runs)
    assert problems == read_records(FIXTURES / "bench_runs.jsonl")[1]  # its own bad line only
    assert len(recs) > len(read_records(FIXTURES / "bench_runs.jsonl")[0])
    assert _names(disk) == ["filler", "runs.jsonl"]  # no lock file left


# ---- the sessions database, read-only or unreadable ------------------------------------------------
OPEN = """
import sys
from pathlib import Path
from engine.errors import StorageError
from engine.sessions.store import SessionStore
try:
    SessionStore(Path(sys.argv[1]))
except StorageError as e:
    print(e)
"""


@pytest.mark.parametrize("mode", [0o444, 0o000])
def test_read_only_or_unreadable_sessions_db_is_refused_at_open(tmp_path, mode):
    from engine.sessions.store import SavedTurn, SessionStore

    path = tmp_path / "sessions.db"
    st = SessionStore(path)
    st.create("s1", "m", "h", None, {})
    st.save_turn("s1", 0, SavedTurn("q", [1], "a", [2]), [1, 2], 0, model_id="m",
                 weights_hash="h", sampling={})
    st.close()
    before = path.read_bytes()
    path.chmod(mode)
    p = subprocess.run([*no_dac_override(), sys.executable, "-c", OPEN, str(path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    path.chmod(0o644)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    msg = p.stdout.strip()
    assert str(path) in msg and "left as it was" in msg
    assert ("read-only" if mode == 0o444 else "cannot be opened") in msg
    assert path.read_bytes() == before
    assert _names(tmp_path) == ["sessions.db"]  # no -wal/-shm left behind, nothing moved aside


def test_one_writer_per_session(tmp_path):
    """A second writer of the same session, in another process, is refused naming the holder;
    another session of the same database is free; released, the session is free again."""
    from engine.locks import LockHeld
    from engine.sessions.writer_lock import session_lock

    db = tmp_path / "sessions.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom engine.sessions.writer_lock import session_lock\n"
         "l = session_lock(sys.argv[1], 's1').acquire()\nprint('held', flush=True)\n"
         "sys.stdin.readline()\nl.release()\n", str(db)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld) as ei:
            session_lock(db, "s1").acquire()
        assert f"process {holder.pid}" in str(ei.value) and "'s1'" in str(ei.value)
        session_lock(db, "s2").acquire().release()
    finally:
        holder.communicate("\n", timeout=60)
    session_lock(db, "s1").acquire().release()
