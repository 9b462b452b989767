"""The dashboard screen with a fast fake engine: bad input keeps Run disabled with one inline
message; a valid form runs the grid and fills the table; Esc stops a run (the engine observes its
token) and the screen returns to idle; the settings' bench timeout (sized to the grid) cancels a
slow run and the screen says so; an engine error is a toast and the app survives; the palette
lists the dashboard's actions; ctrl+e exports even from an Input; the runs file is read off the
event loop, one read at a time."""
from __future__ import annotations

import pytest

import threading

from textual.widgets import Button, DataTable, Input, SelectionList

from app.messages import JobCancelled, JobFailed, JobFinished
from app.settings import BenchGrid

from dashboard_pilot import error_text, open_dashboard, run_button
from app_fakes import DEADLINE_S, FakeEngine, bench_lines, until

SIZE = (120, 40)


def message(scr) -> str:
    return str(scr.query_one("#dash-message").content)


def notes(app) -> list[str]:
    return list(app.toasts)  # every toast shown (tests/app/conftest.py), expired or not


def small_grid(scr, out) -> None:
    scr.query_one("#dash-repeats", Input).value = "1"
    scr.query_one("#dash-mnt", Input).value = "4"
    scr.query_one("#dash-out", Input).value = str(out)


def small_grid_shown(app, scr) -> bool:
    """The form's Input.Changed messages have been handled: the settings hold the small grid."""
    g = app.settings.bench_grid
    return g is not None and (g.repeats, g.max_new_tokens) == (1, 4) and not run_button(scr).disabled


async def run_small_grid(pilot, app, scr, out) -> None:
    """Fill the small grid, wait until the settings hold it, then start it (Ctrl+R)."""
    small_grid(scr, out)
    await until(pilot, lambda: small_grid_shown(app, scr))
    await pilot.press("ctrl+r")


async def test_bad_input_keeps_run_disabled_with_a_message(make_app, tmp_path):
    eng = FakeEngine()
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_dashboard(pilot, app)
        assert not run_button(scr).disabled and error_text(scr) == ""  # the defaults are valid
        assert scr.query_one("#dash-stop", Button).disabled
        bad = [("#dash-repeats", "0", "repeats: must be ≥ 1"), ("#dash-repeats", "x", "whole number"),
               ("#dash-repeats", "", "enter a number"), ("#dash-mnt", "2048", "≤ 2047"),
               ("#dash-out", "  ", "runs file"), ("#dash-out", str(tmp_path), "is a directory")]
        for ident, value, words in bad:
            inp = scr.query_one(ident, Input)
            good = inp.value
            inp.value = value
            await until(pilot, lambda: words in error_text(scr))
            assert run_button(scr).disabled, (ident, value)
            if ident == "#dash-repeats" and value == "0":
                await pilot.press("ctrl+r")  # the key is refused too
            inp.value = good
            await until(pilot, lambda: not run_button(scr).disabled and error_text(scr) == "")
        methods = scr.query_one("#dash-methods", SelectionList)
        methods.deselect_all()
        await until(pilot, lambda: "methods: choose at least one" in error_text(scr))
        assert run_button(scr).disabled
        methods.select("baseline")
        kinds = scr.query_one("#dash-kinds", SelectionList)
        kinds.deselect_all()
        await until(pilot, lambda: "query kinds" in error_text(scr))
        assert run_button(scr).disabled
        kinds.select("chat")
        await until(pilot, lambda: not run_button(scr).disabled)
        # nothing to load or export yet; nothing reached the engine
        assert scr.query_one("#dash-load", Button).disabled
        assert scr.query_one("#dash-export", Button).disabled
        assert eng.bench_calls == [] and not app.runner.busy


async def test_no_model_keeps_run_disabled(make_app):
    from engine.errors import ModelLoadError

    app = make_app(engine=FakeEngine(load_error=ModelLoadError("no such model")))
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_dashboard(pilot, app)
        assert app.model_state == "failed"
        assert run_button(scr).disabled and error_text(scr) == ""
        assert "no model" in str(scr.query_one("#dash-status").content)
        scr.action_run()
        assert not scr.busy and "no model" in error_text(scr)


async def test_valid_run_fills_the_table_and_exports(make_app, tmp_path):
    eng = FakeEngine()
    app = make_app(engine=eng)
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        scr = await open_dashboard(pilot, app)
        out = tmp_path / "runs.jsonl"
        await run_small_grid(pilot, app, scr, out)
        await until(pilot, lambda: any(isinstance(m, JobFinished) and m.kind == "bench"
                                       for m in seen))
        cfg, path = eng.bench_calls[0]
        assert path == str(out)
        assert cfg == {"methods": ["baseline", "kv-fp8"], "suite": "core-v1",
                       "repeats": 1, "max_new_tokens": 4, "kinds": ["chat", "qa"]}
        table = scr.query_one("#dash-table", DataTable)
        await until(pilot, lambda: table.row_count >= 2 and not scr._reading)
        assert f"{len(bench_lines())} records" in message(scr)
        assert not run_button(scr).disabled and scr.query_one("#dash-stop", Button).disabled
        assert not scr.query_one("#dash-export", Button).disabled
        # ctrl+e is a priority binding: it exports even with an Input focused (Input binds ctrl+e)
        scr.query_one("#dash-out", Input).focus()
        await pilot.press("ctrl+e")
        await until(pilot, lambda: scr.last_export and not scr.busy)
        assert eng.exports == [(str(out), str(app.settings.export_dir))]
        assert "exported" in message(scr)


async def test_esc_stops_a_run_and_the_engine_sees_its_token(make_app, tmp_path):
    eng = FakeEngine(bench_delay=10.0)
    app = make_app(engine=eng)
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        scr = await open_dashboard(pilot, app)
        await run_small_grid(pilot, app, scr, tmp_path / "runs.jsonl")
        await until(pilot, lambda: scr.busy and app.runner.in_flight() == 1)
        await until(pilot, lambda: run_button(scr).disabled)
        assert not scr.query_one("#dash-stop", Button).disabled
        assert scr.query_one("#dash-load", Button).disabled
        await pilot.press("escape")
        await until(pilot, lambda: any(isinstance(m, JobCancelled) for m in seen))
        await until(pilot, lambda: not app.runner.busy and app.runner.in_flight() == 0)
        await until(pilot, lambda: scr.progress_widget.state == "cancelled")
        assert eng.cancel_seen == 1
        assert "stopped (user)" in message(scr) and "records are kept" in message(scr)
        assert not run_button(scr).disabled and scr.query_one("#dash-stop", Button).disabled


async def test_bench_timeout_from_settings_cancels_and_the_screen_says_so(make_app, tmp_path):
    eng = FakeEngine(bench_delay=10.0)
    app = make_app(engine=eng)
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        scr = await open_dashboard(pilot, app)
        small_grid(scr, tmp_path / "runs.jsonl")
        # the grid sized the derived bench timeout; the user's value in Settings wins
        await until(pilot, lambda: app.settings.bench_grid == BenchGrid(2, 16, 1, 4, False))
        assert app.runner.timeout_for("bench") == 30.0  # 2×16×2×4 tok ÷ 50 tok/s × 3 → floor
        app.settings.set_user_timeout("bench", 0.3)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: any(isinstance(m, JobCancelled) for m in seen))
        m = next(m for m in seen if isinstance(m, JobCancelled))
        assert m.reason == "timeout" and m.kind == "bench" and scr.job.timeout == 0.3
        await until(pilot, lambda: not app.runner.busy and app.runner.in_flight() == 0)
        await until(pilot, lambda: "stopped (timeout)" in message(scr))
        assert eng.cancel_seen == 1 and "bench timeout" in message(scr)
        assert not run_button(scr).disabled


async def test_engine_error_notifies_and_the_app_survives(make_app, tmp_path):
    eng = FakeEngine(bench_fail=RuntimeError("the grid broke"))
    app = make_app(engine=eng)
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        scr = await open_dashboard(pilot, app)
        await run_small_grid(pilot, app, scr, tmp_path / "runs.jsonl")
        await until(pilot, lambda: any(isinstance(m, JobFailed) for m in seen))
        await until(pilot, lambda: any("the grid broke" in n for n in notes(app)))
        await until(pilot, lambda: "the grid broke" in error_text(scr) and not app.runner.busy)
        assert app.is_running and not app.runner.busy
        assert "the grid broke" in error_text(scr) and "failed" in message(scr)
        assert not run_button(scr).disabled  # fix and retry
        scr.query_one("#dash-repeats", Input).value = "2"
        await until(pilot, lambda: error_text(scr) == "")


async def test_palette_lists_and_runs_the_dashboard_actions(make_app, tmp_path):
    from textual.command import CommandInput, CommandList

    eng = FakeEngine(bench_delay=10.0)
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_dashboard(pilot, app)
        small_grid(scr, tmp_path / "runs.jsonl")
        await until(pilot, lambda: small_grid_shown(app, scr))
        await pilot.press("ctrl+p")
        await until(pilot, lambda: bool(app.screen.query(CommandInput)))
        app.screen.query_one(CommandInput).value = "bench"  # as typed, in one update
        hits = app.screen.query_one(CommandList)
        want = ["dashboard: Run bench grid", "dashboard: Load bench runs",
                "dashboard: Export bench PNG + CSV + JSON", "dashboard: Stop bench run"]
        listed = lambda: [str(hits.get_option_at_index(i).prompt).split("\n")[0]  # noqa: E731
                          for i in range(hits.option_count)]
        await until(pilot, lambda: sorted(listed()) == sorted(want))
        assert [c.title for c in scr.palette_commands()] == want
        await until(pilot, lambda: listed()[hits.highlighted or 0] == "dashboard: Run bench grid")
        await pilot.press("enter")
        await until(pilot, lambda: len(eng.bench_calls) == 1 and scr.busy)
        scr.action_stop()
        await until(pilot, lambda: not app.runner.busy and eng.cancel_seen == 1)


async def test_runs_file_is_read_off_the_loop_one_read_at_a_time(make_app, tmp_path, monkeypatch):
    import app.screens.dashboard_report as dash

    real = dash.read_report
    threads, active, peak = [], [0], [0]
    lock, release = threading.Lock(), threading.Event()

    def slow_read(path):  # a big runs file: the read blocks until the test lets it go
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        threads.append(threading.current_thread().name)
        release.wait(DEADLINE_S)
        try:
            return real(path)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(dash, "read_report", slow_read)
    app = make_app(engine=FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_dashboard(pilot, app)
        out = tmp_path / "runs.jsonl"
        out.write_text("\n".join(bench_lines()) + "\n", encoding="utf-8")
        small_grid(scr, out)
        await until(pilot, lambda: small_grid_shown(app, scr)
                    and not scr.query_one("#dash-load", Button).disabled)
        await pilot.press("ctrl+l")
        await until(pilot, lambda: len(threads) == 1)
        # the loop is free while the read blocks: keys are handled, more refreshes queue up
        assert scr._reading and scr.reads == 0
        assert scr.refresh_report(force=True, announce="again") is False  # queued, not parallel
        assert scr.refresh_report() is False                              # throttled: dropped
        await pilot.press("escape")  # handled at once (nothing to stop)
        assert scr._reading and scr.reads == 0 and len(threads) == 1
        release.set()
        await until(pilot, lambda: scr.reads == 2 and not scr._reading)
        assert peak[0] == 1 and len(threads) == 2
        assert all(n != threading.main_thread().name for n in threads)
        assert scr.query_one("#dash-table", DataTable).row_count >= 2
        assert "again" in message(scr)


async def test_combinations_field_is_validated_and_reaches_the_run(make_app, tmp_path):
    """PROMPT+CACHE combinations typed in the form: a bad one keeps Run disabled with its reason;
    a good one is run as one more method of the grid."""
    eng = FakeEngine()
    app = make_app(engine=eng)
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        scr = await open_dashboard(pilot, app)
        small_grid(scr, tmp_path / "runs.jsonl")
        combos = scr.query_one("#dash-combos", Input)
        for bad, words in (("kv-fp8+prune-nth", "unknown method"), ("kv-fp8", "not PROMPT+CACHE"),
                           ("prune-nth+nope", "unknown method")):
            combos.value = bad
            await until(pilot, lambda: words in error_text(scr))
            assert run_button(scr).disabled, (bad, error_text(scr))
        combos.value = " prune-selfinfo+kv-fp8 , prune-nth+evict-sinks"
        await until(pilot, lambda: not run_button(scr).disabled and error_text(scr) == "")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: any(isinstance(m, JobFinished) and m.kind == "bench" for m in seen))
        cfg, _ = eng.bench_calls[0]
        assert cfg["methods"] == ["baseline", "kv-fp8", "prune-selfinfo+kv-fp8",
                                  "prune-nth+evict-sinks"]


@pytest.mark.parametrize("size", [(140, 45), (80, 24)])
async def test_starts_with_a_small_grid_and_shows_its_estimated_duration(make_app, size):
    """Issue 16.8: baseline + one method ticked; the expected duration is shown before Run
    (the bench budget at the measured speed, without the timeout's margin)."""
    from textual.widgets import SelectionList

    app = make_app()
    async with app.run_test(size=size) as pilot:
        scr = await open_dashboard(pilot, app)
        assert scr.query_one("#dash-methods", SelectionList).selected == ["baseline", "kv-fp8"]
        await until(pilot, lambda: "est. ≈" in str(scr.query_one("#dash-status").content))
        d = app.settings.timeout_details()["bench"]
        from app.settings import fmt_duration

        assert f"est. ≈ {fmt_duration(d.raw_s / d.margin)}" in str(scr.query_one("#dash-status").content)
        assert "50.0 tok/s (measured)" in str(scr.query_one("#dash-status").content)


class CalibratingEngine(FakeEngine):
    """A grid whose first method calibrates (as LaRoSA's first run does): a "calibrate" report
    with tokens and layers, then a wait on the job's token, before the fake's records."""

    def bench(self, lm, cfg, out, *, progress=None, cancel=None):
        from engine.progress import report

        report(progress, "calibrate", 4096, 20480,
               "calibrating LaRoSA rotations: window 3/10, layer 12/30",
               tokens=4096, tokens_total=20480, layers="12/30", window="3/10")
        if cancel is not None and cancel.wait(self.bench_delay):
            self.cancel_seen += 1
            from engine.bench.harness import BenchSummary

            return BenchSummary(run_id="fake", out=out, cancelled=True)
        return super().bench(lm, cfg, out, progress=progress, cancel=cancel)


async def test_calibration_progress_is_shown_and_esc_stops_it(make_app, tmp_path):
    eng = CalibratingEngine(bench_delay=60.0)
    app = make_app(engine=eng)
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        scr = await open_dashboard(pilot, app)
        await run_small_grid(pilot, app, scr, tmp_path / "runs.jsonl")
        grid = scr.query_one("#dash-grid")
        await until(pilot, lambda: "calibrating: 4,096/20,480 tokens" in str(grid.content))
        assert "layers 12/30 of window 3/10" in str(grid.content)
        pw = scr.progress_widget
        await until(pilot, lambda: pw.progress is not None and pw.progress.phase == "calibrate")
        assert "phase [b]calibrate[/]" in pw.title_text() and "layer 12/30" in pw.title_text()
        assert "4,096/20,480" in pw.stats_text() and "layers 12/30" in pw.figures_text()
        await pilot.press("escape")
        await until(pilot, lambda: any(isinstance(m, JobCancelled) for m in seen))
        await until(pilot, lambda: not app.runner.busy and eng.cancel_seen == 1)


async def test_no_shipped_suite_keeps_run_disabled(make_app, monkeypatch):
    """With no suite to choose the Select holds Textual's NULL: one message, Run disabled (the
    check used to compare with a name Textual 8 no longer has, and let "Select.NULL" through)."""
    import app.screens.dashboard as dashboard

    monkeypatch.setattr(dashboard, "suites_available", lambda: [])
    app = make_app(engine=FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_dashboard(pilot, app)
        await until(pilot, lambda: "suite: none chosen" in error_text(scr))
        assert run_button(scr).disabled
