"""The phase-progress widget renders every phase with its bar, step/total, rate unit, ETA and the
phase's own figures (best score + sparkline for search; tree size, depth, best reward for tree)."""
from __future__ import annotations

from textual.app import App, ComposeResult
from textual.widgets import ProgressBar, Sparkline

from app.widgets.phase_progress import RATE_UNITS, PhaseProgress, fmt_seconds
from engine.progress import PHASES, Progress


class Host(App):
    def compose(self) -> ComposeResult:
        yield PhaseProgress(id="pp")


def texts(pp: PhaseProgress) -> str:
    return " | ".join(str(pp.query_one(f"#{i}").content) for i in ("pp-title", "pp-stats", "pp-figures"))


async def test_every_phase_renders():
    app = Host()
    async with app.run_test(size=(120, 8)) as pilot:
        pp = app.query_one(PhaseProgress)
        assert "idle" in texts(pp)
        for i, phase in enumerate(PHASES):
            pp.begin("job", job_id=i)
            pp.show(Progress(phase, 0, 40, f"{phase} starting"), job_id=i)
            pp.phase_started -= 2.0  # two seconds into the phase
            pp.show(Progress(phase, 10, 40, f"working on {phase}"), job_id=i)
            await pilot.pause()
            t = texts(pp)
            assert f"phase [b]{phase}[/]" in t and f"working on {phase}" in t
            assert "10/40" in t and RATE_UNITS[phase] in t
            assert pp.eta() is not None and 5.0 < pp.eta() < 7.0  # 30 steps at 5 steps/s
            assert "Esc to stop" in t
            bar = pp.query_one(ProgressBar)
            assert bar.total == 40 and bar.progress == 10
            pp.end("finished", "done", job_id=i)
            await pilot.pause()
            assert "finished" in texts(pp) and bar.progress == bar.total


async def test_search_best_score_and_sparkline():
    app = Host()
    async with app.run_test(size=(120, 8)) as pilot:
        pp = app.query_one(PhaseProgress)
        pp.begin("advtok", job_id=7)
        for step, best in enumerate([-3.0, -2.5, -2.5, -1.25]):
            pp.show(Progress("search", step + 1, 10, "searching", {"best_score": best, "cands_s": 12.5}), 7)
        await pilot.pause()
        t = texts(pp)
        assert "best score -1.25" in t and "12.5 candidates/s" in t
        spark = pp.query_one(Sparkline)
        assert list(spark.data) == [-3.0, -2.5, -2.5, -1.25] and spark.display


async def test_tree_figures_and_stale_jobs_ignored():
    app = Host()
    async with app.run_test(size=(120, 8)) as pilot:
        pp = app.query_one(PhaseProgress)
        pp.begin("tree", job_id=3)
        pp.show(Progress("tree", 5, 100, "rollouts", {"tree_size": 1234, "depth": 9,
                                                       "best_reward": 0.75, "rollouts_s": 4.0}), 3)
        pp.show(Progress("tree", 99, 100, "old job"), job_id=2)  # stale: dropped
        await pilot.pause()
        t = texts(pp)
        assert "tree size 1,234" in t and "depth 9" in t and "best reward 0.75" in t
        assert "4.0 rollouts/s" in t and "5/100" in t and "old job" not in t
        assert not pp.query_one(Sparkline).display


async def test_unknown_total_and_cancel():
    app = Host()
    async with app.run_test(size=(120, 8)) as pilot:
        pp = app.query_one(PhaseProgress)
        pp.begin("chat", job_id=1)
        pp.show(Progress("generate", 12, None, "generating", {"tok_s": 33.3, "ttft_s": 0.25}), 1)
        await pilot.pause()
        t = texts(pp)
        assert "12 ·" in t and "33.3 tok/s" in t and "ttft_s 0.25" in t and "ETA –" in t
        pp.end("cancelled", "cancelled (user)", 1)
        await pilot.pause()
        assert "cancelled" in texts(pp) and "Esc to stop" not in texts(pp)


def test_fmt_seconds():
    assert fmt_seconds(None) == "–" and fmt_seconds(3.21) == "3.2 s"
    assert fmt_seconds(75) == "1:15" and fmt_seconds(7300) == "2:01 h"


async def test_unknown_figures_show_a_dash_never_none():
    """Issue 16.8: before the first rollout finishes the tree's best reward is None."""
    app = Host()
    async with app.run_test(size=(80, 8)) as pilot:
        pp = app.query_one(PhaseProgress)
        pp.begin("tree", job_id=1)
        pp.show(Progress("tree", 0, 10, "searching", {"best_reward": None, "depth": 0,
                                                       "root_value": None}), job_id=1)
        await pilot.pause()
        t = texts(pp)
        assert "best reward –" in t and "None" not in t


async def test_attack_shows_the_whole_run_beside_the_iteration_bar():
    """The bar is one iteration's candidates; the run line counts iterations and its ETA is the
    rest of this iteration + the iterations left at the finished ones' mean time + the phases
    after them: never below the iteration's own ETA, however long the diagram took before."""
    app = Host()
    async with app.run_test(size=(120, 8)) as pilot:
        pp = app.query_one(PhaseProgress)
        pp.begin("advtok", job_id=1)
        pp.started -= 60.0  # a slow diagram and first scoring before the first iteration
        pp.show(Progress("search", 1, 40, "scored 1/40", {"iteration": 1, "iterations": 10,
                                                          "best": -3.0}), job_id=1)
        pp.iteration_started -= 4.0  # iteration 1 takes 4 s
        pp.show(Progress("search", 1, 40, "scored 1/40", {"iteration": 2, "iterations": 10,
                                                          "best": -3.0}), job_id=1)
        pp.iteration_started -= 2.0  # half of iteration 2 in 2 s
        pp.after_s = 10.0            # sampling after the search, as the screen estimated it
        pp.show(Progress("search", 20, 40, "scored 20/40", {"iteration": 2, "iterations": 10,
                                                            "best": -2.0}), job_id=1)
        await pilot.pause()
        it, n, eta = pp.overall()
        here = pp.eta()
        assert 1.5 < here < 3.0  # this iteration: 20 of 40 in 2 s
        assert (it, n) == (2, 10) and 42.0 < eta < 46.0  # 2 + 8 × 4 + 10
        assert eta >= here
        t = texts(pp)
        assert "run: iteration 2/10" in t and "run ETA" in t and "20/40" in t
        assert "elapsed 1:0" in t  # the job's clock: the diagram included
        assert pp.query_one(ProgressBar).total == 40  # the bar stays per iteration
        pp.end("cancelled", "stopped", job_id=1)
        await pilot.pause()
        assert "run: iteration 2/10" in texts(pp) and "run ETA" not in texts(pp)
        pp.begin("tree", job_id=2)  # a job without iterations shows no run line
        pp.show(Progress("search", 5, 10, "x", {"best": 1.0}), job_id=2)
        await pilot.pause()
        assert pp.overall() is None and "run:" not in texts(pp)


async def test_first_iteration_run_eta_covers_the_iterations_left():
    """Before any iteration finished the run ETA projects the current one: 25 % in 3 s → 9 s
    left here, 12 s for each of the 4 after it."""
    app = Host()
    async with app.run_test(size=(120, 8)) as pilot:
        pp = app.query_one(PhaseProgress)
        pp.begin("advtok", job_id=1)
        pp.show(Progress("search", 1, 40, "", {"iteration": 1, "iterations": 5}), job_id=1)
        pp.iteration_started -= 3.0
        pp.show(Progress("search", 10, 40, "", {"iteration": 1, "iterations": 5}), job_id=1)
        await pilot.pause()
        _, _, eta = pp.overall()
        assert 8.0 < pp.eta() < 10.5 and 55.0 < eta < 60.0


async def test_engine_fraction_moves_the_bar_inside_a_round():
    """Tree search inside its first round: 0 of 6 rollouts done, but the engine says 40 % of the
    round's tokens are decoded: the bar and the ETA follow that."""
    app = Host()
    async with app.run_test(size=(120, 8)) as pilot:
        pp = app.query_one(PhaseProgress)
        pp.begin("tree", job_id=1)
        pp.show(Progress("tree", 0, 6, "round 1: decoding 6 rollouts · token 20/50",
                         {"done_fraction": 0.4}), job_id=1)
        pp.phase_started -= 4.0
        await pilot.pause()
        bar = pp.query_one(ProgressBar)
        assert bar.total == 6 and abs(bar.progress - 2.4) < 1e-6
        assert 5.0 < pp.eta() < 7.0  # 40 % in 4 s
        t = texts(pp)
        assert "token 20/50" in t and "done_fraction" not in t
