"""AdvTok dataset-run benchmark: rows/hour for a synthetic benign dataset on the bundled model
with one process and with two CPU processes under ``accelerate launch``, at EQUAL TOTAL THREADS
(one process × T threads against two × T/2: the machine's cores shared the same way, so the
ratio is the processes' doing, not an oversubscribed default), and whether the rows are
bit-identical (two processes against one process at the same per-process thread count, T/2:
the thread count can change a score's last digits, so only equal counts must agree); then judge
throughput batched vs one sample at a time with identical verdicts (the bundled model as a
rubric grader).

    .venv/bin/python bench/advtok_eval.py [--rows 20] [--iters 2] [--samples 2]
                                          [--total-threads T] [--rounds R] [--judge-samples 8]
                                          [--judge-tokens 32] [--skip-judge] [--out FILE]

Each round runs the one-process and the two-process run once, the order alternating between
rounds (ABBA), each into its own results file; the figures are medians over the rounds, with
the load average before every run. A start above a load of 1 is said loudly: such figures are
same-run comparisons only, not the quiet machine's. Prints the figures and writes
bench/results/advtok_eval.json (or ``--out``). Wall times include each run's model load (every
run loads it the same way); rows/hour is rows ÷ wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
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


#: what may differ between two runs of the same rows: wall-clock times, rates, where it ran
TIMES = ("timings", "finished_at", "candidates_per_s", "judge_info")


def comparable(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k not in TIMES}


def read(path: Path) -> list[dict]:
    return sorted((json.loads(s) for s in path.read_text(encoding="utf-8").splitlines()),
                  key=lambda r: r["id"])


def same(a: list[dict], b: list[dict]) -> bool:
    """Bit-identical rows: every id, score, sample and verdict equal."""
    return [comparable(r) for r in a] == [comparable(r) for r in b]


def save(out: "Path | None", data: dict) -> None:
    if out is None:
        print(f"wrote {write_result('advtok_eval', data)}")
        return
    from engine.atomic import write_json

    write_json(out, data)
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--sample-tokens", type=int, default=16)
    ap.add_argument("--max-neighbours", type=int, default=24)
    ap.add_argument("--judge-samples", type=int, default=8)
    ap.add_argument("--judge-tokens", type=int, default=32)
    ap.add_argument("--total-threads", type=int, default=0,
                    help="threads shared by the processes (default: this machine's cores)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="1-process and 2-process runs per round, order alternating (medians)")
    ap.add_argument("--skip-judge", action="store_true")
    ap.add_argument("--out", type=Path, default=None,
                    help="the JSON to write (default bench/results/advtok_eval.json)")
    a = ap.parse_args()
    from engine.lm.threads import cores

    total = a.total_threads or cores()
    half = max(1, total // 2)
    env0 = env_record()
    load0 = os.getloadavg()[0]
    quiet = load0 <= 1.0
    if not quiet:
        print(f"WARNING: load average {load0:.1f} at the start: not a quiet machine; these "
              f"figures are same-run comparisons only", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="advtok-eval-"))
    data = tmp / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows(a.rows)), encoding="utf-8")
    common = ["attack", "--device", "cpu", "--dataset", str(data), "--iters", str(a.iters),
              "--max-neighbours", str(a.max_neighbours), "--samples", str(a.samples),
              "--sample-tokens", str(a.sample_tokens), "--seed", "0", "--judge", "refusal,target"]
    print(f"{a.rows} rows · {a.iters} iterations · {a.samples} samples × {a.sample_tokens} tokens"
          f" · {total} threads in total · {a.rounds} round(s)")
    accel = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"

    def one_process(out: Path, threads: int) -> list[str]:
        return [sys.executable, "-m", "app.cli", *common, "--threads", str(threads),
                "--out", str(out)]

    def two_processes(out: Path) -> list[str]:
        return [accel, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                str(free_port()), "-m", "app.cli", *common, "--threads", str(half),
                "--out", str(out)]

    runs: list[dict] = []
    for rnd in range(max(1, a.rounds)):
        order = ("one", "two") if rnd % 2 == 0 else ("two", "one")
        for kind in order:
            out = tmp / f"{kind}-{rnd}.jsonl"
            load = os.getloadavg()[0]
            dt = run(one_process(out, total) if kind == "one" else two_processes(out))
            runs.append({"round": rnd, "kind": kind, "wall_s": dt, "loadavg_before": load,
                         "out": out})
            label = f"1 process  × {total} threads" if kind == "one" else \
                f"2 processes × {half} threads"
            print(f"round {rnd + 1}: {label}: {dt:7.1f} s  {a.rows / dt * 3600:7.0f} rows/h  "
                  f"(load {load:.1f} before)")
    t1 = statistics.median(r["wall_s"] for r in runs if r["kind"] == "one")
    t2 = statistics.median(r["wall_s"] for r in runs if r["kind"] == "two")
    print(f"median: 1 process {a.rows / t1 * 3600:.0f} rows/h · 2 processes "
          f"{a.rows / t2 * 3600:.0f} rows/h ({t1 / t2:.2f}× one)")
    r1 = read(next(r["out"] for r in runs if r["kind"] == "one"))
    r2 = read(next(r["out"] for r in runs if r["kind"] == "two"))
    if half != total:
        one_half = tmp / "one_half.jsonl"
        t3 = run(one_process(one_half, half))
        r3 = read(one_half)
        print(f"1 process  × {half} threads: {t3:7.1f} s  {a.rows / t3 * 3600:7.0f} rows/h")
    else:
        t3, r3 = t1, r1
    identical = same(r3, r2)
    print(f"rows bit-identical, 2 processes vs 1 at {half} thread(s) each: {identical}; "
          f"vs 1 process at {total}: {same(r1, r2)}")
    result = {
        "env": env0, "settings": {**vars(a), "out": str(a.out) if a.out else None},
        "quiet_start": quiet, "total_threads": total, "threads_per_process_2": half,
        "runs": [{k: v for k, v in r.items() if k != "out"} for r in runs],
        "one_process_s": t1, "two_process_s": t2, "one_process_half_threads_s": t3,
        "rows_per_hour_1": a.rows / t1 * 3600, "rows_per_hour_2": a.rows / t2 * 3600,
        "speedup_2_vs_1": t1 / t2, "identical_equal_threads": identical,
        "identical_equal_total_threads": same(r1, r2)}
    if a.skip_judge:
        save(a.out, {**result, "env_end": env_record()})
        shutil.rmtree(tmp, ignore_errors=True)
        return
    from engine.advtok.judges import JudgeItem
    from engine.advtok.judges.rubric import RubricJudge
    from engine.lm.model import load_model

    from engine.lm.threads import apply

    apply(total)
    lm = load_model("default")
    items = [JudgeItem(r.get("behavior") or r["request"], s["text"], r["response"],
                       context=r.get("context") or "") for r in r1
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
    save(a.out, {
        **result, "env_end": env_record(), "judge_samples": len(items),
        "judge_one_s": judge_t["one at a time"],
        "judge_batched_s": t_b, "judge_speedup": t_one / t_b, "identical_verdicts": identical,
        "unparsed": sum(1 for lab, _ in verdicts["batched"] if lab == "unparsed")})
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
