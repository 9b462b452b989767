"""AdvTok dataset-run benchmark (issue 12): rows/hour for a synthetic benign dataset on the bundled
model with one process and with two CPU processes under ``accelerate launch`` (same run, same
settings; the two outputs must hold the same rows), and judge throughput batched vs one sample at
a time with identical verdicts (the bundled model as a rubric grader).

    .venv/bin/python bench/advtok_eval.py [--rows 20] [--iters 2] [--samples 2]
                                          [--judge-samples 8] [--judge-tokens 32]

Prints the figures and writes bench/results/advtok_eval.json. Wall times include each run's
model load (both sides load it the same way); rows/hour is rows ÷ wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import env_record, write_result

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ["rain", "the sea", "autumn leaves", "a quiet library", "morning coffee", "a red kite",
          "snow", "a garden", "the moon", "a train journey"]
KINDS = [("Write a haiku about {}", "Sure, here is a haiku", "poetry"),
         ("Describe {} in two sentences", "Sure, here is a description", "prose")]


def rows(n: int) -> list[dict]:
    out = []
    for i in range(n):
        req, resp, cat = KINDS[i % 2]
        out.append({"id": f"row{i:02d}", "request": req.format(TOPICS[(i // 2) % len(TOPICS)]),
                    "response": resp, "category": cat})
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return dt


def key(rec: dict) -> tuple:
    return (rec["id"], rec["best_ids"], [s["token_ids"] for s in rec["adversarial_samples"]],
            [s["token_ids"] for s in rec["canonical_samples"]])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--sample-tokens", type=int, default=16)
    ap.add_argument("--max-neighbours", type=int, default=24)
    ap.add_argument("--judge-samples", type=int, default=8)
    ap.add_argument("--judge-tokens", type=int, default=32)
    a = ap.parse_args()
    env0 = env_record()
    tmp = Path(tempfile.mkdtemp(prefix="advtok-eval-"))
    data = tmp / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(a.rows)), encoding="utf-8")
    common = ["attack", "--device", "cpu", "--dataset", str(data), "--iters", str(a.iters),
              "--max-neighbours", str(a.max_neighbours), "--samples", str(a.samples),
              "--sample-tokens", str(a.sample_tokens), "--seed", "0", "--judge", "refusal,target"]
    one, two = tmp / "one.jsonl", tmp / "two.jsonl"
    print(f"{a.rows} rows · {a.iters} iterations · {a.samples} samples × {a.sample_tokens} tokens")
    t1 = run([sys.executable, "-m", "app.cli", *common, "--out", str(one)])
    print(f"1 process : {t1:7.1f} s  {a.rows / t1 * 3600:7.0f} rows/h")
    accel = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
    t2 = run([accel, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(free_port()), "-m", "app.cli", *common, "--out", str(two)])
    print(f"2 processes: {t2:7.1f} s  {a.rows / t2 * 3600:7.0f} rows/h  ({t1 / t2:.2f}× one)")
    r1 = [json.loads(s) for s in one.read_text(encoding="utf-8").splitlines()]
    r2 = [json.loads(s) for s in two.read_text(encoding="utf-8").splitlines()]
    same_rows = [key(r) for r in r1] == [key(r) for r in r2]
    print(f"same rows from 1 and 2 processes: {same_rows}")

    from engine.advtok.judges import JudgeItem
    from engine.advtok.judges.rubric import RubricJudge
    from engine.lm.model import load_model

    lm = load_model("default")
    items = [JudgeItem(r["request"], s["text"], r["response"]) for r in r1
             for s in r["adversarial_samples"] + r["canonical_samples"]][:a.judge_samples]
    judge_t = {}
    verdicts = {}
    for name, bs in (("one at a time", 1), ("batched", len(items))):
        j = RubricJudge(lm, batch_size=bs, max_new_tokens=a.judge_tokens)
        t0 = time.perf_counter()
        vs = j.judge(items)
        judge_t.setdefault(name, []).append(time.perf_counter() - t0)
        verdicts[name] = [(v.label, v.raw) for v in vs]
    t_one = min(judge_t["one at a time"])
    t_b = judge_t["batched"][0]
    identical = verdicts["one at a time"] == verdicts["batched"]
    print(f"rubric judge, {len(items)} samples × ≤{a.judge_tokens} tokens: one at a time "
          f"{len(items) / t_one:.2f} samples/s, batched {len(items) / t_b:.2f} samples/s "
          f"({t_one / t_b:.2f}×); identical verdicts: {identical}")
    write_result("advtok_eval", {
        "env": env0, "env_end": env_record(), "settings": vars(a),
        "one_process_s": t1, "two_process_s": t2, "rows_per_hour_1": a.rows / t1 * 3600,
        "rows_per_hour_2": a.rows / t2 * 3600, "speedup_2_vs_1": t1 / t2,
        "same_rows": same_rows, "judge_samples": len(items), "judge_one_s": judge_t["one at a time"],
        "judge_batched_s": t_b, "judge_speedup": t_one / t_b, "identical_verdicts": identical,
        "unparsed": sum(1 for lab, _ in verdicts["batched"] if lab == "unparsed")})
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
