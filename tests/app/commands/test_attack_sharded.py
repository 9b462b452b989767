"""Sharded dataset runs: two CPU processes under ``accelerate launch`` produce bit-identical rows
to one process with the same seed and the same thread count; ``accelerate launch --cpu
--num_processes 2`` (which starts one process) says so in one line; a resume after a crash with
a different number of processes skips the finished rows of every shard and redoes only the rest.

Why this test once differed under load (config and sample text, in one run of many; not
reproduced since): the one systematic difference between the two sides was the thread count —
the in-process run used torch's default (two threads here) while accelerate's ranks run with
OMP_NUM_THREADS=1 — and a thread count can change the order a reduction adds up in, so a
near-tied tokenization or a sampled token can go the other way. Every process now runs
``--threads`` threads (default: cores / local processes, engine/lm/threads.py), and here all run
exactly one. What is left that can differ with the machine's state is memory: scoring and
sampling batches shrink only when the available memory cannot hold the planned ones, and each
sample records the batch it was decoded in (a replay uses it)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import main
from engine.advtok.records import read_results, shard_files

pytestmark = pytest.mark.slow  # starts real processes (the fast loop skips them)

ROOT = Path(__file__).resolve().parents[3]
ROWS = [{"request": "Write a haiku about rain", "response": "Sure, here is a haiku", "category": "poetry"},
        {"request": "Name three colours", "response": "Sure, here are", "category": "lists"},
        {"request": "Describe a sunny day", "response": "Sure, here is", "category": "poetry"},
        {"request": "List two fruits", "response": "Sure, here are", "category": "lists"},
        {"request": "Tell me a fun fact", "response": "Sure, here is", "category": "facts"}]
#: what may differ between two runs of the same rows: wall-clock times and rates
TIMES = ("timings", "finished_at", "candidates_per_s")


@pytest.fixture(scope="module")
def setup(tiny_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("shard")
    (d / "tiny").symlink_to(tiny_dir, target_is_directory=True)  # the shared tiny model folder
    (d / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return d


def args_for(d: Path, out: Path) -> list[str]:
    return ["attack", "--device", "cpu", "--model", str(d / "tiny"), "--engine-path", "standard",
            "--dataset", str(d / "rows.jsonl"), "--out", str(out), "--iters", "2", "--samples",
            "2", "--sample-tokens", "4", "--seed", "5", "--judge", "refusal,target",
            "--threads", "1"]


def comparable(rec: dict) -> dict:
    out = {k: v for k, v in rec.items() if k not in TIMES}
    if isinstance(out.get("judge_info"), dict):     # when each judge ran and for how long
        out["judge_info"] = {j: {k: v for k, v in info.items() if k not in ("judged_at", "seconds")}
                             for j, info in out["judge_info"].items()}
    return out


def assert_same_rows(a: list[dict], b: list[dict]) -> None:
    """Bit-identical: every score, id, sample and verdict equal (no tolerance)."""
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for x, y in zip(a, b):
        assert comparable(x) == comparable(y)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*opts: str, argv: list[str]) -> subprocess.CompletedProcess:
    accel = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    assert accel, "accelerate's launcher is installed with the package"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    env.pop("OMP_NUM_THREADS", None)       # the thread count comes from --threads alone
    return subprocess.run(
        [accel, "launch", *opts, "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "app.cli",
         *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)


def one_process(d: Path, capsys) -> Path:
    one = d / "one.jsonl"
    if not one.exists():
        assert main(args_for(d, one)) == 0
        assert "1 thread (--threads)" in capsys.readouterr().err
    return one


def test_two_cpu_processes_equal_one(setup, capsys):
    d = setup
    one, two = one_process(d, capsys), d / "two.jsonl"
    proc = launch("--multi_gpu", "--num_processes", "2", argv=args_for(d, two))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "asked for" not in proc.stderr              # both processes started: no notice
    assert "[0/2]" in proc.stderr and "[1/2]" in proc.stderr     # two ranks really ran
    assert "merged 5 rows" in proc.stderr
    assert shard_files(two) == [two]                             # shards folded into --out
    a = [json.loads(s) for s in one.read_text(encoding="utf-8").splitlines()]
    b = [json.loads(s) for s in two.read_text(encoding="utf-8").splitlines()]
    assert_same_rows(a, b)


def test_cpu_launcher_that_starts_fewer_processes_says_so(setup, capsys):
    """accelerate's --cpu launcher starts one process for --num_processes 2: one line says so,
    and the rows are those of one process."""
    d = setup
    one, cpu = one_process(d, capsys), d / "cpu.jsonl"
    proc = launch("--cpu", "--num_processes", "2", argv=args_for(d, cpu))
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [s for s in proc.stderr.splitlines() if "asked for" in s]
    assert len(said) == 1 and "asked for 2 processes but started 1" in said[0], proc.stderr
    assert "[0/2]" not in proc.stderr and "5 rows done" in proc.stderr
    a = [json.loads(s) for s in one.read_text(encoding="utf-8").splitlines()]
    b = [json.loads(s) for s in cpu.read_text(encoding="utf-8").splitlines()]
    assert_same_rows(a, b)


def test_resume_across_a_changed_process_count(setup, capsys):
    """Shards left by a crashed 2-process run (one with a half-written last line); a 1-process
    rerun redoes only the missing rows and folds everything into one file."""
    d = setup
    ref = one_process(d, capsys)              # the one-process run of the tests above
    full = [json.loads(s) for s in ref.read_text(encoding="utf-8").splitlines()]
    out = d / "resumed.jsonl"
    (d / "resumed.shard-0.jsonl").write_text(json.dumps(full[0]) + "\n", encoding="utf-8")
    (d / "resumed.shard-1.jsonl").write_text(json.dumps(full[1]) + "\n" + json.dumps(full[3])[:40],
                                             encoding="utf-8")
    capsys.readouterr()
    assert main(args_for(d, out)) == 0
    err = capsys.readouterr().err
    assert "3 rows done, 2 already finished" in err and "merged 5 rows" in err
    assert shard_files(out) == [out]
    got = read_results(out).records
    assert_same_rows(full, got)
