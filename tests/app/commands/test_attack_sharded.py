"""Sharded dataset runs: two CPU processes under ``accelerate launch`` produce the same rows as
one process with the same seed; a resume after a crash with a different number of processes
skips the finished rows of every shard and redoes only the rest."""
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
SAME = ("id", "line", "category", "canonical_ids", "best_ids", "prompt_ids", "stop_reason",
        "iterations", "seed", "config", "model", "template")


@pytest.fixture(scope="module")
def setup(tiny_lm, tmp_path_factory):
    d = tmp_path_factory.mktemp("shard")
    tiny_lm.model.save_pretrained(d / "tiny")
    tiny_lm.tokenizer.save_pretrained(d / "tiny")
    (d / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return d


def args_for(d: Path, out: Path) -> list[str]:
    return ["attack", "--device", "cpu", "--model", str(d / "tiny"), "--engine-path", "standard",
            "--dataset", str(d / "rows.jsonl"), "--out", str(out), "--iters", "2", "--samples",
            "2", "--sample-tokens", "4", "--seed", "5", "--judge", "refusal,target"]


def comparable(rec: dict) -> dict:
    d = {k: rec[k] for k in SAME}
    d["samples"] = [(s["token_ids"], s["text"], s["verdicts"]) for s in
                    rec["adversarial_samples"] + rec["canonical_samples"]]
    return d


def assert_same_rows(a: list[dict], b: list[dict]) -> None:
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for x, y in zip(a, b):
        assert comparable(x) == comparable(y)
        assert x["best_score"] == pytest.approx(y["best_score"], abs=1e-4)
        assert x["canonical_score"] == pytest.approx(y["canonical_score"], abs=1e-4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_equal_one(setup, capsys):
    d = setup
    one, two = d / "one.jsonl", d / "two.jsonl"
    assert main(args_for(d, one)) == 0
    capsys.readouterr()
    accel = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    assert accel, "accelerate's launcher is installed with the package"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    proc = subprocess.run(
        [accel, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
         str(free_port()), "-m", "app.cli", *args_for(d, two)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[0/2]" in proc.stderr and "[1/2]" in proc.stderr     # two ranks really ran
    assert "merged 5 rows" in proc.stderr
    assert shard_files(two) == [two]                             # shards folded into --out
    a = [json.loads(s) for s in one.read_text(encoding="utf-8").splitlines()]
    b = [json.loads(s) for s in two.read_text(encoding="utf-8").splitlines()]
    assert_same_rows(a, b)


def test_resume_across_a_changed_process_count(setup, capsys):
    """Shards left by a crashed 2-process run (one with a half-written last line); a 1-process
    rerun redoes only the missing rows and folds everything into one file."""
    d = setup
    ref = d / "one.jsonl"                     # the one-process run of the test above, if it ran
    if not ref.exists():
        assert main(args_for(d, ref)) == 0
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
