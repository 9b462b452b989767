"""Derived timeouts: floor and cap, the derivation shown in settings, per-kind user values kept
when the speed or max new tokens change, and Re-derive. The bench timeout is sized to the
dashboard's grid and follows its form."""
from __future__ import annotations

from textual.widgets import Button, Input

from app.settings import (BENCH_CAP_S, CAP_S, FLOOR_S, AppSettings, BenchGrid,
                          derive_timeout_details, derive_timeouts)

from app_fakes import FakeEngine, until

SIZE = (140, 60)


def test_derived_timeouts_are_held_between_floor_and_cap():
    for tok_s in (None, 1e-3, 0.5, 2.0, 50.0, 1e6, float("nan"), float("inf"), -3.0):
        for max_new in (1, 256, 4096):
            t = derive_timeouts(tok_s, max_new)
            for kind in ("chat", "advtok", "tree"):
                assert FLOOR_S <= t[kind] <= CAP_S, (tok_s, max_new, kind)
            assert FLOOR_S <= t["bench"] <= BENCH_CAP_S, (tok_s, max_new)
            grid = BenchGrid(10, 20, 100, max_new, prose=True)
            assert FLOOR_S <= derive_timeouts(tok_s, 256, grid)["bench"] <= BENCH_CAP_S
    d = derive_timeout_details(50.0, 256)
    # chat: 256 tok ÷ 50 tok/s × 3 = 15.4 s → floor; tree: 15,360 ÷ 50 × 3 = 921.6 → 930 s
    assert d["chat"].seconds == FLOOR_S and d["chat"].limit == "floor"
    assert d["tree"].seconds == 930.0 and d["tree"].limit == "" and d["tree"].budget_tokens == 15360
    # no grid chosen yet: 200 answers; a bench may run for hours (cap 12 h, not 30 min)
    assert d["bench"].seconds == 3080.0 and d["bench"].limit == ""
    assert "200×256 = 51,200 tokens ÷ 50.0 tok/s measured × 3 margin = 51.2 min" \
        in d["bench"].explain()
    unknown = derive_timeout_details(None, 256)["chat"]
    assert not unknown.measured and unknown.tok_s == 2.0 and unknown.seconds == 390.0
    assert "assumed" in unknown.explain()
    assert derive_timeouts(50.0, 256)["load"] is None


def test_bench_timeout_scales_with_the_grid():
    g = BenchGrid(methods=3, queries=16, repeats=5, max_new_tokens=24)
    assert g.runs == 3 * 16 * 6
    d = derive_timeout_details(50.0, 256, g)["bench"]
    # 288 runs × 24 tokens = 6,912 ÷ 50 tok/s × 3 = 414.7 s → 420 s; chat etc. do not change
    assert d.seconds == 420.0 and d.budget_tokens == 6912 and d.limit == ""
    assert ("grid 3 methods × 16 queries × (5+1) = 288 runs × 24 = 6,912 tokens ÷ 50.0 tok/s "
            "measured × 3 margin = 6.9 min") in d.explain()
    assert derive_timeouts(50.0, 256, g)["chat"] == derive_timeouts(50.0, 256)["chat"]
    assert derive_timeout_details(50.0, 256, BenchGrid(3, 16, 10, 24))["bench"].seconds == 770.0
    with_prose = BenchGrid(2, 4, 1, 8, prose=True)
    assert with_prose.runs == 2 * 4 * 2 + 2 and "+ 2 prose" in with_prose.describe()
    huge = derive_timeout_details(None, 256, BenchGrid(10, 20, 100, 4096))["bench"]
    assert huge.seconds == BENCH_CAP_S and huge.limit == "cap" and "→ cap 12.0 h" in huge.explain()
    # the dashboard hands its grid over; the user's own bench timeout is kept
    s = AppSettings()
    s.apply_speed(50.0)
    assert s.set_bench_grid(g) and s.timeouts["bench"] == 420.0
    assert not s.set_bench_grid(BenchGrid(3, 16, 5, 24))  # same grid: nothing to do
    s.set_user_timeout("bench", 90.0)
    s.set_bench_grid(BenchGrid(3, 16, 10, 24))
    assert s.timeouts["bench"] == 90.0


def test_user_timeouts_survive_rederivation():
    s = AppSettings()
    s.set_user_timeout("chat", 45.0)
    s.apply_speed(50.0, source="first answer")
    assert s.timeouts["chat"] == 45.0 and s.timeouts["tree"] == 930.0
    s.sampling.max_new_tokens = 512
    s.rederive()
    assert s.timeouts["chat"] == 45.0 and s.timeouts["tree"] == CAP_S  # 1843 s → cap
    s.timeouts_user_set = False
    s.rederive()
    assert s.timeouts["chat"] == 40.0  # 512 ÷ 50 × 3 = 30.7 → 40 s


async def test_settings_show_the_derivation_and_keep_edits(make_app):
    app = make_app(engine=FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.settings.measured_tok_s == 50.0 and not app.runner.busy)
        await pilot.press("f6")
        await until(pilot, lambda: app.current_mode == "settings")
        scr = app.screen
        why = lambda k: str(scr.query_one(f"#why-{k}").content)  # noqa: E731
        note = str(scr.query_one("#timeouts-note").content)
        assert "measured 50.0 tok/s (speed probe)" in note and "30 s … 30 min" in note
        assert "256 tokens ÷ 50.0 tok/s measured × 3 margin = 15 s → floor 30 s" in why("chat")
        assert "200×256 = 51,200 tokens" in why("bench") and "fixed" in why("vocab")
        assert "bench: sized to the dashboard's grid" in note
        assert scr.query_one("#timeout-tree", Input).value == "930"
        # edit one timeout and max new tokens: the edit is kept, the others re-derive
        scr.query_one("#timeout-chat", Input).value = "45"
        scr.query_one("#set-max-new", Input).value = "512"
        scr.query_one("#apply", Button).press()
        await until(pilot, lambda: app.runner.timeout_for("chat") == 45.0)
        assert app.runner.timeout_for("tree") == CAP_S and app.runner.timeout_for("advtok") == 1230.0
        assert scr.query_one("#timeout-advtok", Input).value == "1230"
        assert "set by you" in why("chat") and "derived would be 40 s" in why("chat")
        assert "set by you" not in why("tree")
        scr.query_one("#derive", Button).press()
        await until(pilot, lambda: app.runner.timeout_for("chat") == 40.0)
        assert app.settings.user_timeouts == set()
        assert scr.query_one("#timeout-chat", Input).value == "40"
        assert "set by you" not in why("chat")


async def test_dashboard_grid_sizes_the_bench_timeout_shown_in_settings(make_app):
    app = make_app(engine=FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.settings.measured_tok_s == 50.0 and not app.runner.busy)
        await pilot.press("f6")
        await until(pilot, lambda: app.current_mode == "settings")
        settings = app.screen
        await pilot.press("f5")
        await until(pilot, lambda: app.current_mode == "dashboard")
        dash = app.screen
        # the default form: baseline, kv-fp8 × core-v1 chat+qa (16) × (5+1) × 24 tok
        await until(pilot, lambda: app.settings.bench_grid == BenchGrid(2, 16, 5, 24))
        assert app.runner.timeout_for("bench") == 280.0  # 2×16×6×24 ÷ 50 × 3 = 276.5 → 280 s
        dash.query_one("#dash-repeats", Input).value = "10"
        await until(pilot, lambda: app.runner.timeout_for("bench") == 510.0)
        await until(pilot, lambda: "timeout 8.5 min" in str(dash.query_one("#dash-status").content))
        assert app.runner.timeout_for("bench") == 510.0  # 2×16×11×24 ÷ 50 × 3 = 506.9 → 510 s
        assert "timeout 8.5 min (derived from this grid" in str(dash.query_one("#dash-status").content)
        # Settings (already open in the background) shows the new derivation and value
        assert settings.query_one("#timeout-bench", Input).value == "510"
        assert "grid 2 methods × 16 queries × (10+1) = 352 runs" in \
            str(settings.query_one("#why-bench").content)
