"""F5 starts a compression sweep: the method and its ratio parameter are picked from the declared
ones (RATIO_PARAMS) with their bound shown, the values are checked by the parser ``bench --sweep``
uses (Run stays disabled with one message), the grid goes through the runner like any bench run
(progress, Esc stops it) with ``BenchConfig.sweeps`` holding exactly what the command line
builds, and with the real engine on the tiny model the Sweep tab shows the finished curve."""
from __future__ import annotations

from textual.widgets import Input, Select, SelectionList

from app.messages import JobCancelled, JobFinished
from engine.bench.sweep import Sweep, parse_sweep

from dashboard_pilot import error_text, open_dashboard, run_button
from app_fakes import FakeEngine, until

SIZE = (130, 50)


async def pick_sweep(pilot, scr, choice: str) -> None:
    """Open the sweep list with the keyboard, move down to ``choice`` and pick it."""
    from app.screens.dashboard_form import sweep_choices

    sel = scr.query_one("#dash-sweep", Select)
    sel.focus()
    await pilot.press("enter")
    await until(pilot, lambda: sel.expanded)
    index = [v for _, v in sweep_choices()].index(choice)
    await pilot.press(*["down"] * (index + 1))  # below the "no sweep" line
    await pilot.press("enter")
    await until(pilot, lambda: sel.value == choice)


async def type_into(pilot, inp: Input, text: str) -> None:
    inp.focus()
    inp.value = ""
    await pilot.pause()
    await pilot.press(*["comma" if c == "," else c for c in text])


async def test_sweep_fields_are_checked_and_reach_the_engine_as_the_cli_builds_them(make_app, tmp_path):
    eng = FakeEngine(bench_delay=10.0)
    app = make_app(engine=eng)
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        scr = await open_dashboard(pilot, app)
        scr.query_one("#dash-repeats", Input).value = "1"
        scr.query_one("#dash-mnt", Input).value = "4"
        scr.query_one("#dash-out", Input).value = str(tmp_path / "runs.jsonl")
        await until(pilot, lambda: not run_button(scr).disabled)
        values = scr.query_one("#dash-sweep-values", Input)
        # values without a sweep method: refused
        await type_into(pilot, values, "4")
        await until(pilot, lambda: "choose the method and parameter" in error_text(scr))
        assert run_button(scr).disabled
        values.value = ""
        await until(pilot, lambda: not run_button(scr).disabled)
        await pick_sweep(pilot, scr, "evict-sinks.window")
        help_text = str(scr.query_one("#dash-sweep-help").content)
        assert "recent KV entries kept per layer" in help_text and "1–1,000,000" in help_text
        await until(pilot, lambda: "sweep evict-sinks.window: no values given" in error_text(scr))
        assert run_button(scr).disabled
        for bad, words in [("0,32", "must be between 1 and"), ("4,4", "value 4 given twice"),
                           ("4,x", "'x' is not a number"), ("4,,8", "an empty value")]:
            await type_into(pilot, values, bad)
            await until(pilot, lambda: words in error_text(scr))
            assert run_button(scr).disabled, bad
        await type_into(pilot, values, "4,32")
        await until(pilot, lambda: not run_button(scr).disabled and error_text(scr) == "")
        # the swept method ticked as well: the sweep already runs it
        methods = scr.query_one("#dash-methods", SelectionList)
        methods.select("evict-sinks")
        await until(pilot, lambda: "also ticked among the methods" in error_text(scr))
        assert run_button(scr).disabled
        methods.deselect("evict-sinks")
        await until(pilot, lambda: not run_button(scr).disabled)
        # the grid counts every swept value as a method
        assert app.settings.bench_grid.methods == 2 + 2
        await pilot.press("ctrl+r")
        await until(pilot, lambda: scr.busy and eng.bench_calls)
        cfg, _ = eng.bench_calls[0]
        assert cfg["sweeps"] == [parse_sweep("evict-sinks.window=4,32")] == \
            [Sweep("evict-sinks", "window", [4, 32])]
        assert cfg["methods"] == ["baseline", "kv-fp8"]
        assert "sweep evict-sinks.window=4,32" in str(scr.query_one("#dash-message").content)
        await until(pilot, lambda: scr.progress_widget.state == "running")
        # cancellable like any bench run
        await pilot.press("escape")
        await until(pilot, lambda: any(isinstance(m, JobCancelled) for m in seen))
        await until(pilot, lambda: not app.runner.busy and eng.cancel_seen == 1)


async def test_an_instance_the_method_refuses_is_stopped_before_run(make_app, tmp_path):
    """CAKE's budget must exceed its window (32): the bound allows 16, the method does not; the
    form says so on Run, as the command line does before loading the model."""
    eng = FakeEngine()
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_dashboard(pilot, app)
        scr.query_one("#dash-out", Input).value = str(tmp_path / "runs.jsonl")
        await pick_sweep(pilot, scr, "evict-cake.budget")
        await type_into(pilot, scr.query_one("#dash-sweep-values", Input), "16,64")
        await until(pilot, lambda: not run_button(scr).disabled)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: "window (32) must be smaller" in error_text(scr))
        assert eng.bench_calls == [] and not scr.busy


async def test_tiny_model_sweep_from_f5_shows_its_curve(make_app, tiny_lm, tmp_path):
    """The real engine on the tiny model: F5's sweep runs through the runner into the runs file,
    every value is a normal record, and the Sweep tab opens on the finished curve."""
    from app.engines import Engine
    from engine.bench.plot_data import sweep_curves
    from engine.bench.records import read_records
    from engine.bench.report import load_report

    app = make_app(engine=Engine(lm=tiny_lm))
    seen = []
    out = tmp_path / "sweep.jsonl"
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        scr = await open_dashboard(pilot, app)
        scr.query_one("#dash-methods", SelectionList).deselect("kv-fp8")
        scr.query_one("#dash-suite", Select).value = "seed-v1"
        kinds = scr.query_one("#dash-kinds", SelectionList)
        kinds.deselect("chat")
        scr.query_one("#dash-repeats", Input).value = "1"
        scr.query_one("#dash-mnt", Input).value = "4"
        scr.query_one("#dash-out", Input).value = str(out)
        await pick_sweep(pilot, scr, "evict-sinks.window")
        await type_into(pilot, scr.query_one("#dash-sweep-values", Input), "4,32")
        await until(pilot, lambda: not run_button(scr).disabled)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: any(isinstance(m, JobFinished) and m.kind == "bench"
                                       for m in seen))
        recs, problems = read_records(out)
        assert problems == [] and all(r["status"] == "ok" for r in recs)
        assert sorted({r["params"].get("window") for r in recs if r["method"] == "evict-sinks"}) == [4, 32]
        plot = scr.query_one("#plot-sweep")
        await until(pilot, lambda: plot.curves and not scr._reading)
        assert scr.query_one("#dash-plots").active == "tab-sweep"
        (curve,) = sweep_curves(load_report(out))
        assert [(c.method, [p.value for p in c.points]) for c in plot.curves] == \
            [("evict-sinks", [4, 32])] == [(curve.method, [p.value for p in curve.points])]
