"""The run-progress state shared by the CLI and the TUI, on a fake clock: the phase inside a row
from the engine's own events, rows/hour and the ETA (h:mm:ss) from finished rows, and which
events start a new step (a log line) rather than tick inside one."""
from __future__ import annotations

from engine.advtok.runprogress import RunProgress, hms
from engine.progress import Progress


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def test_hms():
    assert hms(0) == "0:00:00" and hms(59.6) == "0:01:00" and hms(3725) == "1:02:05"
    assert hms(100 * 3600) == "100:00:00" and hms(None) == "—" and hms(float("nan")) == "—"


def test_phases_rate_and_eta():
    c = Clock()
    rp = RunProgress(rows=3, clock=c)
    assert rp.eta() is None and rp.rows_per_hour() is None and "ETA —" in rp.line()
    assert rp.update(Progress("row", 1, 3, "", {"row_id": "r0"}))
    assert rp.update(Progress("mdd", 10, 40, "scanning bytes"))
    assert "diagram byte 10/40" in rp.line()
    assert not rp.update(Progress("mdd", 20, 40, "scanning bytes"))           # a tick
    assert rp.update(Progress("search", 1, 1, "scored 1/1 candidates"))
    assert "search scoring · scored 1/1" in rp.line()
    assert rp.update(Progress("search", 3, 12, "scored 3/12 candidates",
                              {"iteration": 1, "iterations": 50}))
    assert "row 1/3 (r0) · search iteration 1/50 · scored 3/12" in rp.line()
    assert not rp.update(Progress("search", 9, 12, "scored 9/12 candidates",
                                  {"iteration": 1, "iterations": 50}))
    assert rp.update(Progress("search", 2, 50, "iteration 2/50", {"iteration": 2}))
    assert rp.update(Progress("generate", 4, 64, "adversarial: generating", {"side": "adversarial"}))
    assert "sampling adversarial token 4/64" in rp.line()
    assert not rp.update(Progress("generate", 5, 64, "adversarial: generating", {"side": "adversarial"}))
    assert rp.update(Progress("generate", 1, 64, "canonical: generating", {"side": "canonical"}))
    assert rp.update(Progress("judge", 1, 2, "refusal (adversarial, 8 samples)"))
    assert "judging refusal (adversarial, 8 samples)" in rp.line()
    c.t = 100.0
    rp.update(Progress("row-done", 1, 3, "", {"row_id": "r0"}))
    assert rp.done == 1 and rp.rows_per_hour() == 36.0
    assert rp.eta() == 200.0 and "1/3 rows done" in rp.line() and "ETA 0:03:20" in rp.line()
    c.t = 150.0                                  # half way through row 2: 150 s left, not 250
    rp.update(Progress("row", 2, 3, "", {"row_id": "r1"}))
    assert rp.eta() == 150.0 and rp.rows_per_hour() == 36.0
    assert rp.line().endswith("starting · 36 rows/h · ETA 0:02:30 · elapsed 0:02:30")
    c.t = 400.0                                  # slower than the mean: the ETA stops at 0
    assert rp.eta() == 0.0
