"""TUI progress throttling: a worker that reports as fast as it can, with the runner's pumps
throttled (every 50 ms, the app's setting) vs unthrottled (every report posted, same code path).

For each mode, in a headless Textual app whose PhaseProgress widget and a token Static are updated
by the messages: the worker's reports/s (how much the UI slows the engine), messages posted, UI
updates applied, event-loop lag while it runs (a 10 ms timer's lateness: what a key press waits),
and how long the UI needs after the worker ends to catch up. Both modes run in the same process,
interleaved, so the ratio is meaningful even on a busy machine.

    .venv/bin/python bench/tui_progress.py [--seconds 2] [--repeats 3]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import env_record, write_result  # noqa: E402

from textual.app import App, ComposeResult  # noqa: E402
from textual.widgets import Static  # noqa: E402

from app.messages import JobFinished, JobProgressed, TokensGenerated  # noqa: E402
from app.runner import Runner  # noqa: E402
from app.widgets.phase_progress import PhaseProgress  # noqa: E402
from engine.progress import Progress  # noqa: E402


class Host(App):
    def __init__(self, every: float) -> None:
        super().__init__()
        self.runner = Runner(self.post_message, every=every)
        self.text: list[str] = []
        self.applied = 0
        self.last_msg_at = 0.0
        self.done_at = 0.0

    def compose(self) -> ComposeResult:
        yield Static("", id="tokens")
        yield PhaseProgress(id="pp")

    def on_job_progressed(self, m: JobProgressed) -> None:
        self.query_one(PhaseProgress).show(m.progress)
        self.applied += 1
        self.last_msg_at = time.perf_counter()

    def on_tokens_generated(self, m: TokensGenerated) -> None:
        self.text.append(m.text)
        self.query_one("#tokens", Static).update("".join(self.text)[-200:])
        self.applied += 1
        self.last_msg_at = time.perf_counter()

    def on_job_finished(self, m: JobFinished) -> None:
        self.done_at = time.perf_counter()


def producer(seconds: float, *, on_token, progress, cancel) -> dict:
    """An engine loop with no real work: one token + one progress report per iteration."""
    n = 0
    end = time.perf_counter() + seconds
    t_end = 0.0
    while True:
        now = time.perf_counter()
        if now >= end:
            t_end = now
            break
        n += 1
        on_token("x", n)
        progress(Progress("search", n, None, "searching", {"best_score": -1.0 / n}))
        cancel.check()
    return {"reports": n, "worker_end": t_end}


async def one_run(every: float, seconds: float) -> dict:
    app = Host(every)
    lags: list[float] = []
    async with app.run_test(size=(100, 10)) as pilot:
        await pilot.pause(0.2)
        stop = asyncio.Event()

        async def probe() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                await asyncio.sleep(0.01)
                lags.append(time.perf_counter() - t - 0.01)

        probe_task = asyncio.create_task(probe())
        job = app.runner.start("advtok", producer, seconds, stream=True, needs_model=False,
                               timeout=0)
        await job.wait()
        # wait until the UI has applied every posted message (the queue is drained)
        while app.query_one(PhaseProgress).progress is None or \
                app.query_one(PhaseProgress).progress.step != job.result["reports"]:
            await asyncio.sleep(0.005)
        caught_up = time.perf_counter()
        stop.set()
        await probe_task
    res = job.result
    lags.sort()
    posted = app.applied
    return {"every_s": every, "reports": res["reports"], "reports_per_s": res["reports"] / seconds,
            "messages_applied": posted, "messages_per_s": posted / seconds,
            "lag_p50_ms": 1000 * lags[len(lags) // 2], "lag_p99_ms": 1000 * lags[int(len(lags) * 0.99)],
            "lag_max_ms": 1000 * lags[-1],
            "catch_up_s": max(0.0, caught_up - res["worker_end"])}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows: dict[str, list[dict]] = {"throttled": [], "unthrottled": []}
    for _ in range(args.repeats):  # interleaved
        rows["throttled"].append(await one_run(0.05, args.seconds))
        rows["unthrottled"].append(await one_run(0.0, args.seconds))
    summary = {}
    for mode, rs in rows.items():
        summary[mode] = {k: statistics.median(r[k] for r in rs)
                         for k in rs[0] if k != "every_s"}
    t, u = summary["throttled"], summary["unthrottled"]
    ratios = {"worker_speed_throttled_vs_unthrottled": t["reports_per_s"] / u["reports_per_s"],
              "lag_p99_unthrottled_vs_throttled": u["lag_p99_ms"] / max(t["lag_p99_ms"], 1e-3),
              "messages_unthrottled_vs_throttled": u["messages_applied"] / max(t["messages_applied"], 1)}
    print(f"{'mode':<12} {'reports/s':>10} {'msgs/s':>8} {'lag p50':>8} {'lag p99':>8} "
          f"{'lag max':>8} {'catch-up':>9}")
    for mode, s in summary.items():
        print(f"{mode:<12} {s['reports_per_s']:>10,.0f} {s['messages_per_s']:>8,.0f} "
              f"{s['lag_p50_ms']:>6.1f}ms {s['lag_p99_ms']:>6.1f}ms {s['lag_max_ms']:>6.0f}ms "
              f"{s['catch_up_s']:>8.2f}s")
    for k, v in ratios.items():
        print(f"{k}: {v:.1f}×")
    out = write_result("tui_progress", {"env": env_record(), "seconds": args.seconds,
                                        "repeats": args.repeats, "runs": rows,
                                        "median": summary, "ratios": ratios})
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
