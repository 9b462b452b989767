"""Compression sweeps (``bench --sweep METHOD.KEY=V1,V2,…``): parsing and the declared bounds
(one message, exit 2, before any model loads), the bounds agreeing with what each method's
constructor enforces, a sweep on the tiny model end to end through the command line, and the
report's sweep table, CSV, PNG and the dashboard's curve drawing the table's own figures."""
from __future__ import annotations

import csv
import io

import pytest

from engine.bench.methods import make_method
from engine.bench.methods.params import RATIO_PARAMS
from engine.bench.sweep import MAX_VALUES, Sweep, check_sweeps, parse_sweep
from engine.errors import InputError

from waiting import until


# ---- parsing and bounds --------------------------------------------------------------------------
def test_parse_both_spellings():
    assert parse_sweep("evict-cake.budget=64,128,256") == Sweep("evict-cake", "budget", [64, 128, 256])
    assert parse_sweep("prune-selfinfo:ratio=0.2, 0.5") == Sweep("prune-selfinfo", "ratio", [0.2, 0.5])
    assert parse_sweep("sparsity-rotated.sparsity=0,0.4").values == [0, 0.4]


@pytest.mark.parametrize("spec, words", [
    ("evict-cake", "expected METHOD.KEY=V1,V2"),
    ("budget=64", "expected METHOD.KEY=V1,V2"),
    ("warp.budget=1,2", "unknown method 'warp'"),
    ("kv-fp8.bits=4,8", "kv-fp8 has no ratio parameter"),
    ("evict-cake.window=8,16", "evict-cake sweeps budget"),
    ("evict-cake.budget=", "no values"),
    ("evict-cake.budget=64,,128", "empty value"),
    ("evict-cake.budget=64,abc", "'abc' is not a number"),
    ("evict-cake.budget=1,64", "must be between 2 and"),
    ("evict-cake.budget=64.5", "not a whole number"),
    ("prune-selfinfo.ratio=0.5,1.0", "must be in (0, 1)"),
    ("prune-selfinfo.ratio=0,0.5", "must be in (0, 1)"),
    ("sparsity-rotated.sparsity=1", "must be in [0, 1)"),
    ("prune-nth.n=1", "must be between 2 and"),
    ("evict-sinks.window=16,16", "value 16 given twice"),
])
def test_bad_sweeps_are_one_message(spec, words):
    with pytest.raises(InputError) as e:
        parse_sweep(spec)
    assert words in str(e.value)


def test_too_many_values():
    with pytest.raises(InputError, match=f"at most {MAX_VALUES}"):
        parse_sweep("evict-sinks.window=" + ",".join(str(i) for i in range(1, MAX_VALUES + 2)))


def test_sweep_against_the_rest_of_the_config():
    sw = parse_sweep("evict-sinks.window=8,16")
    check_sweeps([sw], ["baseline"], {"evict-sinks": {"sinks": 2}})
    with pytest.raises(InputError, match="also among --methods"):
        check_sweeps([sw], ["baseline", "evict-sinks"], {})
    with pytest.raises(InputError, match="both set it"):
        check_sweeps([sw], ["baseline"], {"evict-sinks": {"window": 4}})
    with pytest.raises(InputError, match="swept twice"):
        check_sweeps([sw, parse_sweep("evict-sinks.window=32")], ["baseline"], {})


_EDGES = {  # method -> (extra params, accepted edge values, refused values)
    "evict-cake": ({"window": 1}, [2], [1]),
    "evict-snapkv": ({"window": 1}, [2], [1]),
    "evict-pyramidkv": ({"window": 1}, [2], [1]),
    "evict-sinks": ({}, [1], [0]),
    "prune-nth": ({}, [2], [1]),
    "prune-selfinfo": ({}, [1e-6, 1 - 1e-6], [0.0, 1.0]),
    "sparsity-magnitude": ({}, [0.0, 0.999], [1.0, -0.1]),
    "sparsity-rotated": ({}, [0.0, 0.999], [1.0, -0.1]),
    "phrase-merge": ({}, [0], [-1]),
}


@pytest.mark.parametrize("method", sorted(RATIO_PARAMS))
def test_declared_bounds_agree_with_the_constructors(method):
    rp = RATIO_PARAMS[method]
    extra, good, bad = _EDGES[method]
    for v in good:
        assert rp.bound.why_not(v) is None
        make_method(method, **{**extra, rp.key: v})
    for v in bad:
        assert rp.bound.why_not(v) is not None
        with pytest.raises(InputError):
            make_method(method, **{**extra, rp.key: v})


def test_cli_sweep_errors_exit_2_with_one_message(capsys):
    from app.cli import main

    assert main(["bench", "--sweep", "evict-cake.budget=1,64"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--sweep evict-cake.budget: must be between 2 and" in err and len(err.splitlines()) <= 2
    assert main(["bench", "--sweep", "kv-fp8.bits=4"]) == 2
    assert "no ratio parameter" in capsys.readouterr().err
    assert main(["bench", "--methods", "baseline,evict-sinks", "--sweep", "evict-sinks.window=4,8"]) == 2
    assert "also among --methods" in capsys.readouterr().err
    # an instance's own checks run before the model loads: a budget at or below CAKE's window
    assert main(["bench", "--sweep", "evict-cake.budget=16,64"]) == 2
    assert "window (32) must be smaller" in capsys.readouterr().err


# ---- a sweep on the tiny model, end to end -------------------------------------------------------
@pytest.fixture(scope="module")
def swept(tiny_dir, tmp_path_factory):
    """baseline + evict-sinks at two windows on two queries, then `bench report` of the file."""
    from app.cli import main

    d = tmp_path_factory.mktemp("sweep")
    out = d / "runs.jsonl"
    rc = main(["bench", "--model", str(tiny_dir), "--engine-path", "standard",
               "--sweep", "evict-sinks.window=4,32", "--param", "evict-sinks.sinks=2",
               "--queries", "qa-1,qa-2", "--repeats", "1", "--max-new-tokens", "4",
               "--no-warmup", "--out", str(out)])
    assert rc == 0
    rc = main(["bench", "report", str(out), "--png", str(d / "png"), "--csv", str(d / "agg.csv"),
               "--markdown", str(d / "table.md")])
    assert rc == 0
    return d, out


def test_each_value_is_a_normal_record_with_its_parameters(swept):
    from engine.bench.records import read_records

    _, out = swept
    recs, problems = read_records(out)
    assert problems == [] and all(r["status"] == "ok" for r in recs)
    sinks = [r for r in recs if r["method"] == "evict-sinks"]
    assert sorted({r["params"]["window"] for r in sinks}) == [4, 32]
    assert all(r["params"]["sinks"] == 2 for r in sinks)
    assert {r["method"] for r in recs} == {"baseline", "evict-sinks"}
    # quality is measured per value, not copied from the first instance of the method
    kl = {r["params"]["window"]: r["quality"]["kl_mean"] for r in sinks if r["prompt_id"] == "qa-1"}
    assert kl[4] != kl[32]


def test_report_csv_and_plots_agree_with_the_table(swept):
    from engine.bench.plot_data import sweep_curves
    from engine.bench.report import fmt_interval, load_report

    d, out = swept
    rep = load_report(out)
    (curve,) = sweep_curves(rep)
    assert (curve.method, curve.param, curve.measure) == ("evict-sinks", "window", "kv")
    assert [p.value for p in curve.points] == [4, 32]
    for p in curve.points:
        row = next(r for r in rep.rows if r.key == p.key)
        ratio = row.ratio["kv_bytes_allocated"]  # the table's "KV allocated" ratio cell
        assert p.x.value == pytest.approx(1 - ratio.value)
        assert p.y["kl_mean"].value == row.quality["kl_mean"].value
        assert p.y["top1_agree"].value == row.quality["top1_agree"].value
    # a smaller window removes more of the cache
    assert curve.points[0].x.value > curve.points[1].x.value > 0
    md = (d / "table.md").read_text()
    assert "Sweep evict-sinks: quality vs compression" in md
    row4 = next(r for r in rep.rows if r.key == curve.points[0].key)
    assert fmt_interval(row4.quality["kl_mean"]) in md
    assert f"{curve.points[0].x.value:.0%}" in md
    rows = list(csv.DictReader(io.StringIO((d / "agg.csv").read_text())))
    by_val = {r["sweep_value"]: r for r in rows if r["sweep_param"] == "window"}
    assert set(by_val) == {"4", "32"}
    assert float(by_val["4"]["compression"]) == pytest.approx(curve.points[0].x.value)
    assert float(by_val["4"]["kl_mean_mean"]) == pytest.approx(row4.quality["kl_mean"].value)
    png = d / "png" / "bench-sweep-kv.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


async def test_dashboard_draws_the_sweep_curve(swept, tmp_path):
    """F5 with a runs file holding a sweep: the Sweep tab draws the curve from the same points
    as the report (x = compression achieved, y = KL), with its interval segments."""
    from textual.widgets import DataTable, Input

    from app.app import TokenforgeApp
    from app.settings import AppSettings
    from engine.bench.plot_data import sweep_curves
    from engine.bench.report import load_report

    _, out = swept
    settings = AppSettings()
    settings.export_dir = tmp_path / "exports"
    app = TokenforgeApp(settings=settings, autoload=False, install_signals=False)
    async with app.run_test(size=(160, 60)) as pilot:
        await pilot.press("f5")
        await until(pilot, lambda: app.screen.id == "dashboard-screen")
        scr = app.screen
        scr.query_one("#dash-out", Input).value = str(out)
        await pilot.pause()
        scr.action_load()
        table = scr.query_one("#dash-table", DataTable)
        await until(pilot, lambda: table.row_count == 3 and not scr._reading)
        plot = scr.query_one("#plot-sweep")
        await until(pilot, lambda: plot.drawn >= 1)
        assert scr.query_one("#dash-plots").active == "tab-sweep"  # shown when a sweep is there
        expect = sweep_curves(load_report(out))
        assert [(c.method, [(p.value, p.x.value, p.y["kl_mean"].value) for p in c.points])
                for c in plot.curves] == \
            [(c.method, [(p.value, p.x.value, p.y["kl_mean"].value) for p in c.points]) for c in expect]
        assert plot.metric == "kl_mean"
        # the plot draws at its laid-out size: the tab it sits in was hidden until the data came
        await until(pilot, lambda: plot.size.area > 0)
        shown = plot.render().plain
        assert "evict-sinks (window)" in shown
        # the curve's own colour and marker (plot_data.curve_styles), no row's
        from engine.bench.plot_data import curve_styles, styles

        rep = load_report(out)
        (style,) = plot.curve_styles
        assert style == curve_styles(rep, expect)[0]
        assert style.colour not in {s.colour for s in styles(rep).values()}
        assert style.glyph in shown
        for j in app.runner.jobs.values():
            j.cancel("shutdown")


def test_no_sweep_in_plain_runs():
    from pathlib import Path

    from engine.bench.plot_data import sweep_curves
    from engine.bench.report import load_report, sweep_markdown

    rep = load_report(Path(__file__).resolve().parents[1] / "fixtures" / "bench_runs.jsonl")
    assert sweep_curves(rep) == [] and sweep_markdown(rep) == ""


def test_bench_list_names_each_sweep_parameter_and_its_bound(capsys):
    from app.cli import main

    assert main(["bench", "list"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "evict-cake.budget in 2–1,000,000" in out and "prune-selfinfo.ratio in (0, 1)" in out
