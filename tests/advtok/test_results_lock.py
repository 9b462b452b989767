"""`attack judge` (in place) and `attack merge` against a run that is still writing: a real
second process appends rows holding the results lock, exactly as a dataset run does
(engine.advtok.evalrun.run_rows), while the judge or merge works. No row may be lost, the judged
rows carry their verdicts, and a refusal names the writing process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine.advtok.evalrun import rejudge_file
from engine.advtok.judges import make_judges
from engine.advtok.records import merge_results, read_results, shard_files
from engine.errors import DiskFull
from engine.locks import LockHeld, lock_path

ROOT = Path(__file__).resolve().parents[2]

# A dataset run's writing, reduced to what matters here: hold the results lock, append finished
# rows one complete line at a time, and (for the test's timing) stop halfway until told to go on.
WRITER = r"""
import json, sys
from engine.atomic import append_line
from engine.locks import FileLock, LockHeld
path, first, n1, n2, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
row = lambda i: json.dumps({"id": f"r{i:02d}", "line": i, "request": "Write a haiku about rain",
    "response": "Sure, here is", "category": "poetry", "judges": [],
    "adversarial_samples": [{"text": "Sure, here is a haiku about rain"}],
    "canonical_samples": [{"text": "I cannot write that, sorry"}]})
say = lambda s: (print(s, flush=True))
try:
    lock = FileLock(path, f"results file {path}", wait=None if wait == "wait" else 0,
                    on_wait=lambda m: say("waiting: " + m))
    lock.acquire()
except LockHeld as e:
    say(f"held: {e}")
    sys.exit(3)
say("locked")
for i in range(first, first + n1):
    append_line(path, row(i))
say("half")
sys.stdin.readline()
for i in range(first + n1, first + n1 + n2):
    append_line(path, row(i))
lock.release()
say("done")
"""


def rows(first: int, n: int) -> str:
    out = []
    for i in range(first, first + n):
        out.append(json.dumps({"id": f"r{i:02d}", "line": i, "request": "Write a haiku about rain",
                               "response": "Sure, here is", "category": "poetry", "judges": [],
                               "adversarial_samples": [{"text": "Sure, here is a haiku about rain"}],
                               "canonical_samples": [{"text": "I cannot write that, sorry"}]}))
    return "".join(line + "\n" for line in out)


class Writer:
    """The second process: ``Writer(path, first, n1, n2)`` locks, appends n1 rows, waits for
    :meth:`go`, appends n2 more and releases."""

    def __init__(self, path: Path, first: int, n1: int, n2: int, wait: bool = False) -> None:
        self.p = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(first), str(n1),
                                   str(n2), "wait" if wait else "nowait"], cwd=ROOT, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.pid = self.p.pid

    def line(self) -> str:
        return self.p.stdout.readline().strip()

    def go(self) -> None:
        self.p.stdin.write("\n")
        self.p.stdin.flush()

    def finish(self) -> int:
        rc = self.p.wait(timeout=120)
        self.p.stdout.close()
        self.p.stdin.close()
        return rc


def refusal_judges(counter: list[int]):
    def build():
        counter.append(1)
        return make_judges("refusal")
    return build


def verdicts_everywhere(recs: list[dict], judge: str = "refusal") -> bool:
    return all(judge in s.get("verdicts", {}) for r in recs
               for s in r["adversarial_samples"] + r["canonical_samples"])


def test_judge_in_place_refuses_a_writing_run_and_loses_nothing(tmp_path, capsys):
    res = tmp_path / "results.jsonl"
    res.write_text(rows(0, 4))
    w = Writer(res, 4, 6, 10)
    assert w.line() == "locked" and w.line() == "half"   # the run has appended 6 rows and goes on
    before = res.read_bytes()
    built: list[int] = []
    with pytest.raises(LockHeld) as ei:
        rejudge_file(res, refusal_judges(built))
    assert f"process {w.pid}" in str(ei.value) and "--out" in ei.value.hint
    assert built == []                                   # refused before any judge model loads
    assert res.read_bytes() == before                    # and nothing was rewritten
    from app.cli import main                             # the command: one line, exit 2

    capsys.readouterr()
    assert main(["attack", "judge", str(res), "--judge", "refusal"]) == 2
    err = capsys.readouterr().err
    assert f"process {w.pid}" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2
    w.go()
    assert w.line() == "done" and w.finish() == 0
    done = rejudge_file(res, refusal_judges(built))      # the run has ended: judged in place
    recs = read_results(res).records
    assert done.rows == 20 and [r["id"] for r in recs] == [f"r{i:02d}" for i in range(20)]
    assert verdicts_everywhere(recs) and all(r["judges"] == ["refusal"] for r in recs)
    assert not lock_path(res).exists()


def test_judge_into_another_file_while_the_run_appends(tmp_path):
    res, out = tmp_path / "results.jsonl", tmp_path / "judged.jsonl"
    res.write_text(rows(0, 4))
    w = Writer(res, 4, 6, 6)
    assert w.line() == "locked" and w.line() == "half"
    done = rejudge_file(res, refusal_judges([]), out)   # a snapshot of the finished rows
    assert done.rows == 10 and any("still being written" in n for n in done.notes)
    judged = read_results(out).records
    assert [r["id"] for r in judged] == [f"r{i:02d}" for i in range(10)] and verdicts_everywhere(judged)
    w.go()
    assert w.line() == "done" and w.finish() == 0
    assert [r["id"] for r in read_results(res).records] == [f"r{i:02d}" for i in range(16)]


def test_a_run_starting_while_the_judge_works_waits_or_is_refused(tmp_path):
    """The judge holds the lock from its read to its rewrite: a run starting meanwhile is told
    which process holds the file (refused at once, as `attack --dataset` is, or waiting); a
    waiting writer's rows land after the rewrite, none lost, the judged rows keep verdicts."""
    res = tmp_path / "results.jsonl"
    res.write_text(rows(0, 5))
    entered, go = threading.Event(), threading.Event()

    class Gate:  # the real refusal judge, held at its first batch until the writers have tried
        def __init__(self, inner):
            self.inner, self.id = inner, inner.id

        def judge(self, items):
            entered.set()
            assert go.wait(120)
            return self.inner.judge(items)

    box: dict = {}

    def judge():
        try:
            box["done"] = rejudge_file(res, lambda: [Gate(j) for j in make_judges("refusal")])
        except BaseException as e:  # pragma: no cover - reported by the assertion below
            box["error"] = e

    t = threading.Thread(target=judge)
    t.start()
    try:
        assert entered.wait(120)
        refused = Writer(res, 100, 1, 1)                    # like a dataset run: no waiting
        assert refused.line().startswith("held:") and refused.finish() == 3
        waiting = Writer(res, 5, 3, 2, wait=True)
        assert waiting.line().startswith("waiting:")
    finally:
        go.set()
        t.join(120)
    assert "error" not in box and box["done"].rows == 5
    assert waiting.line() == "locked" and waiting.line() == "half"
    waiting.go()
    assert waiting.line() == "done" and waiting.finish() == 0
    recs = read_results(res).records
    assert [r["id"] for r in recs] == [f"r{i:02d}" for i in range(10)]
    assert verdicts_everywhere(recs[:5]) and not any(r["judges"] for r in recs[5:])


def test_merge_refuses_a_shard_being_written_then_folds_every_row(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    s0, s1 = tmp_path / "results.shard-0.jsonl", tmp_path / "results.shard-1.jsonl"
    s0.write_text(rows(0, 3))
    s1.write_text(rows(3, 2))
    w = Writer(s1, 5, 2, 3)                               # rank 1 still appending
    assert w.line() == "locked" and w.line() == "half"
    before = {p: p.read_bytes() for p in (s0, s1)}
    with pytest.raises(LockHeld, match=f"process {w.pid}"):
        merge_results(out)
    from app.cli import main

    capsys.readouterr()
    assert main(["attack", "merge", str(out)]) == 2
    assert f"process {w.pid}" in capsys.readouterr().err
    assert not out.exists() and {p: p.read_bytes() for p in (s0, s1)} == before
    w.go()
    assert w.line() == "done" and w.finish() == 0
    n, _ = merge_results(out)
    assert n == 10 and shard_files(out) == [out]
    assert [r["id"] for r in read_results(out).records] == [f"r{i:02d}" for i in range(10)]


def test_judge_in_place_on_a_full_disk_changes_nothing(tmp_path):
    from smalldisk import fill, small_disk

    with small_disk(tmp_path / "disk", "256k") as disk:
        res = disk / "results.jsonl"
        res.write_text(rows(0, 40))
        before = res.read_bytes()
        fill(disk)
        with pytest.raises(DiskFull) as ei:
            rejudge_file(res, refusal_judges([]))
        assert str(res) in str(ei.value)
        assert res.read_bytes() == before
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "results.jsonl"]
        os.unlink(disk / "filler")
