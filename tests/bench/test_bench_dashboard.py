"""Terminal plots render in a headless App.run_test(); the dashboard screen runs a small grid on
the tiny model through the runner, shows the aggregate table and exports PNGs + CSV."""
from __future__ import annotations

import json
from pathlib import Path

from textual.app import App, ComposeResult

from app.widgets.plots import CostQualityPlot, MedianBarsPlot, QualityPlot, SpeedContextPlot, downsample
from engine.bench.report import load_report

from waiting import until

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bench_runs.jsonl"


class PlotsApp(App):
    def compose(self) -> ComposeResult:
        yield CostQualityPlot(id="a")
        yield MedianBarsPlot(id="b")
        yield SpeedContextPlot(id="c")
        yield QualityPlot(id="d")


async def test_plots_render_headless():
    rep = load_report(FIXTURE)
    app = PlotsApp()
    ids = ("#a", "#b", "#c", "#d")
    async with app.run_test(size=(120, 60)) as pilot:
        for pid in ids:
            app.query_one(pid).show(rep)
        await until(pilot, lambda: all(app.query_one(p).drawn for p in ids))
        for pid in ids:
            w = app.query_one(pid)
            assert w.drawn == 1
            text = w.render().plain
            assert "kv-fp8" in text  # legend entries are drawn
            assert len(text.splitlines()) >= 10
        empty = app.query_one("#a")
        empty.show(None)
        await until(pilot, lambda: "no data yet" in empty.render().plain)


async def test_terminal_plots_draw_intervals_and_label_na():
    """Error bars are drawn from the table's intervals (a vertical segment per ratio with an
    interval) and a method without a speed figure is labelled n/a, not left out."""
    import json as _json

    from engine.bench.report import aggregate

    recs = []
    for line in FIXTURE.read_text().splitlines():
        try:
            r = _json.loads(line)
        except ValueError:
            continue
        if r["method"] == "kv-fp8":
            r["speed_note"] = "n/a: no sparse kernel"
        recs.append(r)
    rep = aggregate(recs)
    app = PlotsApp()
    async with app.run_test(size=(120, 60)) as pilot:
        bars, speed = app.query_one("#b"), app.query_one("#c")
        bars.show(rep)
        speed.show(rep)
        await until(pilot, lambda: bars.drawn and speed.drawn)
        assert "kv-fp8: n/a: no sparse kernel" in bars.na_labels
        assert speed.na_labels == ["kv-fp8: n/a: no sparse kernel"]
        assert "n/a" in bars.render().plain
        # the KL interval of kv-fp8 (0.01–0.03) is drawn as a segment: more than a lone dot
        cost = app.query_one("#a")
        cost.show(rep)
        await until(pilot, lambda: cost.drawn)
        assert cost.intervals == 2  # kv-fp8: its KL and its memory ratio; the others have none
        assert bars.intervals >= 1


async def test_ratio_chart_goes_log_when_the_ratios_span_more_than_20x():
    """The terminal's ratio chart takes the PNGs' rule (plot_data.ratio_axis): the fixture's
    ratios (0.1x to 1.7x) stay linear; one method holding 1 % of the baseline's KV bytes makes
    the panel span >20x, drawn on a log axis that says so in its title and axis label."""
    import json as _json

    from engine.bench.plot_data import bar_groups, ratio_axis
    from engine.bench.report import aggregate

    recs = []
    for line in FIXTURE.read_text().splitlines():
        try:
            recs.append(_json.loads(line))
        except ValueError:
            continue
    linear = aggregate(recs)
    for r in recs:
        if r["method"] == "kv-reuse":
            r["cost"]["kv_bytes_stored"] = r["cost"]["kv_bytes_stored"] // 100
    wide = aggregate(recs)
    app = PlotsApp()
    async with app.run_test(size=(120, 60)) as pilot:
        bars = app.query_one("#b")
        for rep, log in ((wide, True), (linear, False), (wide, True)):
            n = bars.drawn
            bars.show(rep)
            await until(pilot, lambda: bars.drawn == n + 1)
            _, series = bar_groups(rep)
            assert ratio_axis([b for v in series.values() for b in v]).log is log
            assert bars.log_axis is log
            text = bars.render().plain
            assert ("log scale" in text) is log
            if log:
                assert "× baseline (log scale)" in text


def test_export_names_do_not_repeat_bench(tmp_path):
    """The default runs file is bench-runs.jsonl: its exports are bench-runs-*.png, never
    bench-bench-runs-*; the copy of the records never lands on the runs file itself."""
    from app.engines import Engine

    runs = tmp_path / "bench-runs.jsonl"
    runs.write_bytes(FIXTURE.read_bytes())
    paths = [Path(p).name for p in Engine().bench_export(str(runs), str(tmp_path))]
    assert "bench-runs-cost-quality.png" in paths and "bench-runs.csv" in paths
    assert not any(p.startswith("bench-bench") for p in paths)
    assert "bench-runs.records.jsonl" in paths and runs.read_bytes() == FIXTURE.read_bytes()
    other = tmp_path / "mine.jsonl"
    other.write_bytes(FIXTURE.read_bytes())
    assert "bench-mine-quality.png" in [Path(p).name for p in Engine().bench_export(str(other), str(tmp_path / "o"))]


def test_downsample_keeps_ends():
    pts = [(float(i), float(i)) for i in range(1000)]
    d = downsample(pts, 100)
    assert len(d) <= 101 and d[0] == pts[0] and d[-1] == pts[-1]
    assert downsample(pts[:5], 100) == pts[:5]


async def test_dashboard_runs_grid_and_exports(tiny_lm, tmp_path):
    from textual.widgets import DataTable, Input, SelectionList

    from app.app import TokenforgeApp
    from app.settings import AppSettings

    settings = AppSettings()
    settings.export_dir = tmp_path / "exports"
    app = TokenforgeApp(lm=tiny_lm, settings=settings, autoload=False, install_signals=False)
    async with app.run_test(size=(160, 60)) as pilot:
        app.lm, app.model_state = tiny_lm, "ready"
        app.switch_mode("dashboard")
        await pilot.pause()
        scr = app.screen
        kinds = scr.query_one("#dash-kinds", SelectionList)
        kinds.deselect("qa")  # chat only: 8 short queries
        methods = scr.query_one("#dash-methods", SelectionList)
        methods.deselect("kv-reuse")
        scr.query_one("#dash-repeats", Input).value = "1"
        scr.query_one("#dash-mnt", Input).value = "4"
        out = tmp_path / "runs.jsonl"
        scr.query_one("#dash-out", Input).value = str(out)
        await pilot.pause()
        scr.action_run()
        await scr.job.wait()
        assert out.exists()
        table = scr.query_one("#dash-table", DataTable)
        # the runs file is re-read off the event loop
        await until(pilot, lambda: table.row_count == 2 and not scr._reading)  # baseline, kv-fp8
        assert scr.query_one("#plot-cost").drawn >= 1
        scr.action_export()
        await scr.job.wait()
        pngs = list((tmp_path / "exports").glob("*.png"))
        assert pngs and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
        assert list((tmp_path / "exports").glob("*.csv"))
        (copy,) = list((tmp_path / "exports").glob("*.jsonl"))
        assert copy.read_bytes() == out.read_bytes()  # the records behind the figures
        (env,) = list((tmp_path / "exports").glob("*.json"))  # the one export envelope
        doc = json.loads(env.read_text())
        assert doc["kind"] == "bench" and doc["settings"]["runs"] == str(out)
        assert [r["method"] for r in doc["result"]["rows"]] == ["baseline", "kv-fp8"]
        # bad input: repeats 0 is refused with one message, nothing started
        scr.query_one("#dash-repeats", Input).value = "0"
        await until(pilot, lambda: scr.query_one("#dash-run").disabled)  # via its Input.Changed
        scr.action_run()
        assert not scr.busy
        assert "repeats" in str(scr.query_one("#dash-error").render())
        for j in app.runner.jobs.values():
            j.cancel("shutdown")


async def test_dashboard_shows_inputs_and_outputs_of_the_selected_row(tmp_path):
    """The In / out tab: the highlighted row's prompt as fed and its answer, per query, with the
    query's own figures."""
    from textual.widgets import DataTable, Input

    from app.app import TokenforgeApp
    from app.settings import AppSettings

    lines = []
    for line in FIXTURE.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r["status"] == "ok" and r["kind"] != "prose":
            r["quality"]["output"] = f"answer of {r['method']} to {r['prompt_id']}"
            r["quality"]["input"] = f"prompt fed by {r['method']} for {r['prompt_id']}"
        lines.append(json.dumps(r))
    runs = tmp_path / "runs.jsonl"
    runs.write_text("\n".join(lines) + "\n")
    settings = AppSettings()
    settings.export_dir = tmp_path / "exports"
    app = TokenforgeApp(settings=settings, autoload=False, install_signals=False)
    async with app.run_test(size=(160, 60)) as pilot:
        app.switch_mode("dashboard")
        await pilot.pause()
        scr = app.screen
        scr.query_one("#dash-out", Input).value = str(runs)
        await pilot.pause()
        scr.action_load()
        table = scr.query_one("#dash-table", DataTable)
        await until(pilot, lambda: table.row_count == 3 and not scr._reading)
        io = scr.query_one("#dash-io")
        await until(pilot, lambda: "answer of baseline to qa-1" in str(io.content))
        table.move_cursor(row=2)
        await until(pilot, lambda: "answer of kv-fp8 to long-1" in str(io.content))
        shown = str(io.content)
        assert "prompt fed by kv-fp8 for chat-1" in shown and "total ×1.04" in shown
        for j in app.runner.jobs.values():
            j.cancel("shutdown")
