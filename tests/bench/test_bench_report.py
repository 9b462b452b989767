"""Report aggregation on a fixed JSONL fixture (figures chosen by hand; expectations recomputed
by brute force), bootstrap verdict rules, CSV / Markdown / PNG export and the CLI report."""
from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

import pytest

from engine.bench.records import read_records, validate_record
from engine.bench.plots import write_pngs
from engine.bench.report import aggregate, bar_groups, load_report, scatter_points, to_csv, to_markdown
from engine.bench.stats import LOAD_MOVED, NOT_ENOUGH, bootstrap_ci, paired_ratio
from engine.errors import InputError

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bench_runs.jsonl"


def _raw() -> list[dict]:
    out = []
    for line in FIXTURE.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


def test_fixture_reads_with_truncated_last_line_reported():
    recs, problems = read_records(FIXTURE)
    assert len(recs) == len(_raw()) == 29
    assert len(problems) == 1 and problems[0].startswith("line 30")
    assert all(validate_record(r) == [] for r in recs)


def test_medians_and_iqr_match_brute_force():
    rep = load_report(FIXTURE)
    raw = [r for r in _raw() if r["status"] == "ok" and r["kind"] != "prose"]
    for row in rep.rows:
        mine = [r for r in raw if r["method"] == row.method]
        vals = sorted(r["cost"]["total_s"] for r in mine)
        assert row.cost["total_s"].median == pytest.approx(statistics.median(vals))
        q = statistics.quantiles(vals, n=4, method="inclusive")
        assert row.cost["total_s"].q1 == pytest.approx(q[0])
        assert row.cost["total_s"].q3 == pytest.approx(q[2])
        assert row.cost["total_s"].n == 9
    assert [r.method for r in rep.rows] == ["baseline", "kv-reuse", "kv-fp8"]
    assert rep.row("kv-fp8").errors == 1 and "boom" in rep.row("kv-fp8").error_messages[0]


def test_paired_ratios_average_repeats_then_queries():
    """The ratio is the geometric mean over queries of each query's repeats' paired ratios
    (brute force below); three queries carry no verdict however clear the interval."""
    rep = load_report(FIXTURE)
    raw = [r for r in _raw() if r["status"] == "ok" and r["kind"] != "prose"]
    base = {(r["prompt_id"], r["repeat"]): r for r in raw if r["method"] == "baseline"}
    per_q: dict[str, list[float]] = {}
    for r in raw:
        if r["method"] == "kv-fp8":
            b = base[(r["prompt_id"], r["repeat"])]["cost"]["total_s"]
            per_q.setdefault(r["prompt_id"], []).append(math.log(r["cost"]["total_s"] / b))
    want = math.exp(statistics.fmean(statistics.fmean(v) for v in per_q.values()))
    got = rep.row("kv-fp8").ratio["total_s"]
    assert got.value == pytest.approx(want)
    assert got.n == 3 and got.pairs == 9 and got.lo <= got.value <= got.hi
    assert got.verdict == NOT_ENOUGH
    kv = rep.row("kv-fp8").ratio["kv_bytes_stored"]
    assert 0.25 < kv.value < 0.26 and kv.verdict == NOT_ENOUGH  # clear, but 3 queries
    assert rep.row("kv-reuse").ratio["kv_bytes_stored"].value == pytest.approx(1.0)


def _synthetic(n_queries: int, *, fast: float = 0.5, kv: float = 0.25, loads=None) -> list[dict]:
    """baseline and kv-fp8 over ``n_queries`` queries × 2 repeats from the fixture's first record."""
    proto = _raw()[0]
    out = []
    t = 0
    for q in range(n_queries):
        for rep in range(2):
            for method, scale_t, scale_kv in (("baseline", 1.0, 1.0), ("kv-fp8", fast, kv)):
                r = json.loads(json.dumps(proto))
                t += 1
                r.update(method=method, prompt_id=f"chat-{q}", repeat=rep,
                         time=f"2026-11-23T10:{t // 60:02d}:{t % 60:02d}+00:00")
                noise = 1.0 + 0.03 * ((q * 7 + rep * 3) % 5 - 2)
                r["cost"]["total_s"] = (1.0 + q) * scale_t * noise
                r["cost"]["kv_bytes_stored"] = int(100000 * (q + 1) * scale_kv)
                r["quality"]["kl_mean"] = 0.0 if method == "baseline" else 0.01 * (q + 1)
                if loads is not None:
                    r["env"]["loadavg"] = [loads[t % len(loads)], 0.8, 0.5]
                out.append(r)
    return out


def test_verdicts_need_five_queries():
    assert aggregate(_synthetic(4)).row("kv-fp8").ratio["total_s"].verdict == NOT_ENOUGH
    rep = aggregate(_synthetic(6))
    fp8 = rep.row("kv-fp8")
    assert fp8.ratio["total_s"].verdict == "faster" and fp8.ratio["total_s"].hi < 1
    assert fp8.ratio["kv_bytes_stored"].verdict == "less memory"
    assert fp8.ratio["total_s"].n == 6 and fp8.ratio["total_s"].pairs == 12
    slower = aggregate(_synthetic(6, fast=1.6)).row("kv-fp8").ratio["total_s"]
    assert slower.verdict == "worse" and slower.lo > 1
    assert not rep.timing_verdicts_off


def test_a_moving_load_takes_the_timing_verdicts_away_and_says_so():
    rep = aggregate(_synthetic(6, loads=[1.0, 3.5]))  # 2 CPUs: threshold 1.0
    fp8 = rep.row("kv-fp8")
    assert fp8.ratio["total_s"].verdict == LOAD_MOVED
    assert fp8.ratio["kv_bytes_stored"].verdict == "less memory"  # bytes do not depend on load
    assert "load average moved" in rep.footer() and "no timing verdicts" in rep.footer()
    assert "no verdict" in to_markdown(rep)
    assert aggregate(_synthetic(6, loads=[1.0, 3.5]), load_limit=5.0).row("kv-fp8") \
        .ratio["total_s"].verdict == "faster"


def test_the_runs_own_threads_are_not_a_moving_load():
    """On 2 cores a 2-thread bench lifts the 1-minute average from an idle start (0.9) to ~2.2 by
    itself: that is not other work, so timings keep their verdicts; other work on top (3.4) is."""
    own = aggregate(_synthetic(6, loads=[1.1, 1.6, 2.2]))  # env threads 2, start reading 1.0
    assert own.row("kv-fp8").ratio["total_s"].verdict == "faster" and not own.timing_verdicts_off
    other = aggregate(_synthetic(6, loads=[1.1, 2.2, 3.4]))
    assert other.row("kv-fp8").ratio["total_s"].verdict == LOAD_MOVED


def test_quality_aggregates():
    rep = load_report(FIXTURE)
    fp8 = rep.row("kv-fp8")
    kl = fp8.quality["kl_mean"]
    assert kl.value == pytest.approx(0.02) and kl.n == 3 and kl.lo < 0.02 < kl.hi  # 0.01/0.02/0.03
    assert fp8.diverged == pytest.approx(1 / 3)
    assert fp8.contains == pytest.approx(0.5)
    assert rep.row("baseline").quality["kl_mean"].value == 0
    assert rep.row("baseline").diverged == 0
    assert rep.row("baseline").prose["bpb"] == pytest.approx(1.1)
    six = aggregate(_synthetic(6)).row("kv-fp8").quality["kl_mean"]
    assert six.value == pytest.approx(0.035) and six.lo < 0.035 < six.hi


def test_bootstrap_rules():
    one = {f"q{i}": [(0.5, 1.0), (0.5, 1.0)] for i in range(6)}
    assert paired_ratio(one).verdict == "faster"
    assert paired_ratio({k: [(2.0, 1.0)] for k in one}).verdict == "worse"
    assert paired_ratio({"q": [(0.5, 1.0)] * 10}).verdict == NOT_ENOUGH  # repeats of one query
    mixed = paired_ratio({f"q{i}": [(v, 1.0)] for i, v in enumerate((0.8, 1.2, 0.9, 1.1, 1.0, 0.95))})
    assert mixed.verdict == "no clear difference" and mixed.lo < 1 < mixed.hi
    assert paired_ratio({k: [(2.0, 1.0)] for k in one}, lower_is_better=False).verdict == "faster"
    assert paired_ratio({}).value is None
    lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert lo < 3.5 < hi and hi - lo < 5  # an interval of the mean, not the min–max range


def test_csv_markdown_and_plot_data():
    rep = load_report(FIXTURE)
    rows = list(csv.DictReader(io.StringIO(to_csv(rep))))
    assert [r["method"] for r in rows] == ["baseline", "kv-reuse", "kv-fp8"]
    assert rows[2]["kv_bytes_stored_verdict"] == NOT_ENOUGH
    assert float(rows[0]["total_s_median"]) == pytest.approx(2.0)
    assert float(rows[2]["kl_mean_mean"]) == pytest.approx(0.02)
    md = to_markdown(rep)
    assert "fixture-model" in md and "not enough data" in md and md.count("\n|") >= 4
    assert "Per query" in md
    pts = scatter_points(rep)
    assert {p[0] for p in pts} == {"baseline", "kv-reuse", "kv-fp8"}
    names, series = bar_groups(rep)
    assert [b.value for b in series["baseline"]] == [1.0 if n != "KV allocated" else None for n in names]
    assert series["baseline"][names.index("KV allocated")].na == "no figure"  # older records
    assert series["kv-fp8"][names.index("KV counted")].value < 0.3


def test_plots_draw_the_tables_figures():
    """Every bar is the table's ratio with the table's interval; the scatter's y is the table's
    KL with its interval; n/a is a state with its reason, not a missing bar."""
    from engine.bench.plot_data import BAR_METRICS, quality_bars

    recs = _synthetic(6)
    for r in recs:
        if r["method"] == "kv-fp8":
            r["speed_note"] = "n/a: no sparse kernel"
    rep = aggregate(recs)
    names, series = bar_groups(rep)
    fp8 = rep.row("kv-fp8")
    for m, bar in zip(BAR_METRICS, series["kv-fp8"]):
        if m in ("prefill_s", "decode_tok_s", "total_s"):
            assert bar.value is None and bar.na == "n/a: no sparse kernel"
        elif fp8.ratio[m].value is not None:
            assert (bar.value, bar.lo, bar.hi) == (fp8.ratio[m].value, fp8.ratio[m].lo, fp8.ratio[m].hi)
    (_, x, y), = [p for p in scatter_points(rep) if p[0] == "kv-fp8"]
    assert (y.value, y.lo, y.hi) == (fp8.quality["kl_mean"].value, fp8.quality["kl_mean"].lo,
                                     fp8.quality["kl_mean"].hi)
    assert x.value == fp8.ratio["kv_bytes_stored"].value
    qn, qs = quality_bars(rep)
    assert qs["kv-fp8"][0].value == fp8.quality["kl_mean"].value


def test_a_ratio_panel_spanning_more_than_20x_is_drawn_on_a_log_axis():
    """A reserved buffer at 27x beside evictions at 0.25x flattened every other bar on a linear
    axis: such a panel goes to a log axis whose bars still end at the table's ratios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.bench.plot_data import Bar, styles
    from engine.bench.plots import _hbars

    rep = aggregate(_synthetic(6))
    st = styles(rep)
    for bars, scale in (({"baseline": Bar(1.0, 1.0, 1.0), "kv-fp8": Bar(27.0, 12.5, 59.0)}, "log"),
                        ({"baseline": Bar(1.0, 1.0, 1.0), "kv-fp8": Bar(0.25, 0.24, 0.26)}, "linear")):
        fig, ax = plt.subplots()
        _hbars(ax, rep, st, bars, "KV allocated ÷ baseline", ref=1.0)
        assert ax.get_xscale() == scale
        ends = sorted(round(p.get_x() + p.get_width(), 6) for p in ax.patches)
        assert ends == sorted(round(b.value, 6) for b in bars.values())
        plt.close(fig)


def test_ratio_axis_rule():
    """One rule for the PNGs and the terminal: log beyond a 20x span of positive figures
    (interval ends count), a reference line required, the floor below the lowest figure."""
    from engine.bench.plot_data import LOG_SPAN, Bar, ratio_axis

    assert LOG_SPAN == 20
    assert not ratio_axis([Bar(1.0), Bar(0.05)]).log            # exactly 20x
    a = ratio_axis([Bar(1.0), Bar(0.5, 0.049, 0.6)])             # the interval end spans it
    assert a.log and a.floor == pytest.approx(0.049 / 1.5) and a.label == "log scale"
    assert ratio_axis([Bar(0.5, 0.4, 0.6)]).top == 1.0            # the reference line is in view
    assert not ratio_axis([Bar(30.0, 25.0, 40.0)]).log           # the figures span 1.6x only
    assert not ratio_axis([Bar(0.0), Bar(30.0)]).log             # nothing non-positive on log
    assert not ratio_axis([Bar(0.01), Bar(30.0)], ref=None).log  # quality means: linear
    assert not ratio_axis([Bar(na="no figure")]).log


def test_colours_never_repeat():
    from engine.bench.plot_data import colours, styles

    cs = colours(60)
    assert len(set(cs)) == 60 and "#000000" not in cs
    recs = []
    for i in range(25):
        for r in _synthetic(1):
            r["method"] = "baseline" if r["method"] == "baseline" else f"m{i}"
            recs.append(r)
    st = styles(aggregate(recs))
    assert len(st) == 26 and len({s.colour for s in st.values()}) == 26
    assert st["baseline"].colour == "#000000"


def test_png_export(tmp_path):
    paths = write_pngs(load_report(FIXTURE), tmp_path / "png")
    assert [p.name for p in paths] == ["bench-core-v1.png", "bench-ratios.png", "bench-cost-quality.png",
                                       "bench-quality.png", "bench-toks-vs-context.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_speed_note_replaces_speed_columns():
    recs = [r for r in _raw() if r["kind"] != "prose"]
    for r in recs:
        if r["method"] == "kv-fp8":
            r["speed_note"] = "n/a: no sparse kernel"
    rep = aggregate(recs)
    md = to_markdown(rep)
    assert md.count("n/a: no sparse kernel") == 3  # prefill, decode, total
    assert "| long-1 | ×0.60 · KL 1e-09 | n/a · KL 0.03 |" in md  # the per-query breakdown too


def test_bad_report_inputs(tmp_path):
    with pytest.raises(InputError):
        load_report(tmp_path / "missing.jsonl")
    empty = tmp_path / "e.jsonl"
    empty.write_text("not json\n")
    with pytest.raises(InputError, match="no valid records"):
        load_report(empty)


def test_cli_report(tmp_path, capsys):
    from app.cli import main

    rc = main(["bench", "report", str(FIXTURE), "--png", str(tmp_path / "p"), "--csv",
               str(tmp_path / "a.csv"), "--markdown", str(tmp_path / "t.md")])
    assert rc == 0
    assert (tmp_path / "a.csv").read_text().startswith("method,")
    assert (tmp_path / "p" / "bench-core-v1.png").exists()
    out = capsys.readouterr()
    assert "kv-fp8" in out.out and "line 30" in out.err
    assert main(["bench", "report"]) == 2
    assert main(["bench", "report", str(tmp_path / "nope.jsonl")]) == 2


def test_kind_filter():
    rep = load_report(FIXTURE, kinds=["long"])
    assert rep.row("baseline").cost["total_s"].n == 3
    assert rep.row("baseline").cost["total_s"].median == pytest.approx(5.0)
    assert rep.row("baseline").prose["bpb"] == pytest.approx(1.1)
    assert "query kinds: long" in rep.notes
    with pytest.raises(InputError, match="no records of kind"):
        load_report(FIXTURE, kinds=["chat-x"])


def test_needle_accuracy_by_depth():
    """Long-document records are counted per planted-fact depth (repeat 0): from the record's own
    depth, or from the shipped suite when an older record has none."""
    from engine.bench.report import needle_table

    recs, _ = read_records(FIXTURE)
    base = next(r for r in recs if r["method"] == "baseline" and r["kind"] == "qa")
    extra = []
    for method, pid, rep, depth, hit in [("baseline", "long-x", 0, 0.25, True),
                                         ("baseline", "long-y", 0, 0.75, True),
                                         ("kv-fp8", "long-x", 0, 0.25, True),
                                         ("kv-fp8", "long-y", 0, 0.75, False),
                                         ("kv-fp8", "long-y", 1, 0.75, True)]:  # repeats don't count
        r = json.loads(json.dumps(base))
        r.update(method=method, prompt_id=pid, kind="long", repeat=rep)
        r["quality"]["contains"] = hit
        if depth is not None:
            r["quality"]["depth"] = depth
        extra.append(r)
    rep = aggregate(recs + extra)
    # the fixture's own long-1 records carry no depth: it comes from the shipped core-v1 suite
    suite_depth = float(json.loads((Path(__file__).resolve().parents[2] / "engine" / "bench" / "suites" / "core-v1.jsonl")
                                   .read_text().splitlines()[16])["meta"]["depth"])
    for method, mine in (("baseline", {0.25: (1, 1), 0.75: (1, 1)}), ("kv-fp8", {0.25: (1, 1), 0.75: (0, 1)})):
        fx = next(r for r in recs if r["method"] == method and r["prompt_id"] == "long-1" and r["repeat"] == 0)
        want = dict(mine)
        if fx["quality"].get("contains") is not None:
            want[suite_depth] = (int(fx["quality"]["contains"]), 1)
        assert rep.row(method).needle == want
    head, rows = needle_table(rep)
    assert head[0] == "method" and "depth 0.25" in head and len(rows) >= 2
    assert "Needle accuracy" in to_markdown(rep)


def test_bench_list_says_how_each_method_simplifies_its_paper(capsys):
    from app.cli import main
    from engine.bench.methods import make_method, method_names

    assert main(["bench", "list"]) == 0
    out = capsys.readouterr().out
    assert "how it simplifies" in out and "all-combined" in out and "kv-contiguous" in out
    assert "all-combined runs one method per part at once: prompt prune-selfinfo" in out
    assert "vocab phrase-merge" in " ".join(out.split())
    simplified = {n: make_method(n).simplification for n in method_names()}
    for n in ("evict-cake", "evict-snapkv", "sparsity-rotated", "phrase-merge", "kv-contiguous",
              "hybrid-kv", "all-combined", "prune-selfinfo"):
        assert simplified[n], n  # each re-implementation of a paper says what it leaves out
    # how the seed's vAttention + CAKE is simplified, and that the list shows it
    assert "evicted slots are reused by the next token" in simplified["hybrid-kv"]
    assert "hybrid-kv" in out and "vAttention's" in out


def _with_sweeps(long_key: bool = False) -> list[dict]:
    """baseline and kv-fp8 (``_synthetic``) plus two sweeps: evict-sinks at windows 4 and 32 and
    evict-snapkv at budgets 64 and 128 (kv-fp8's figures, relabelled); ``long_key`` adds a row
    whose key is far wider than a tick label."""
    import copy

    base = _synthetic(6)
    out = list(base)
    variants = [("evict-sinks", {"window": 4}), ("evict-sinks", {"window": 32}),
                ("evict-snapkv", {"budget": 64}), ("evict-snapkv", {"budget": 128})]
    if long_key:
        variants.append(("all-combined", {"cache.budget": 40, "cache.window": 8,
                                          "model.calib_tokens": 2048, "model.sparsity": 0.5}))
    for i, (method, params) in enumerate(variants):
        for r in base:
            if r["method"] == "kv-fp8":
                c = copy.deepcopy(r)
                c.update(method=method, params=params)
                c["cost"]["kv_bytes_stored"] = int(c["cost"]["kv_bytes_stored"] * (1 + 0.1 * i))
                c["quality"]["kl_mean"] = c["quality"]["kl_mean"] * (1 + i)
                out.append(c)
    return out


def _capture_pngs(monkeypatch) -> list:
    """Every figure write_pngs saves: (its axes, its legend texts), taken before it is closed."""
    from matplotlib.figure import Figure

    saved = []
    orig = Figure.savefig

    def savefig(fig, *a, **k):
        saved.append((list(fig.axes), [t.get_text() for lg in fig.legends for t in lg.get_texts()]))
        return orig(fig, *a, **k)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def test_each_sweep_curve_has_its_own_colour_and_marker(tmp_path, monkeypatch):
    """A curve used to wear its first point's row colour; now every curve has a colour no row and
    no other curve has, from the same never-repeating palette, and a marker; the PNG draws it."""
    from matplotlib.colors import to_hex

    from engine.bench.plot_data import curve_styles, styles, sweep_curves
    from engine.bench.plots import write_pngs

    rep = aggregate(_with_sweeps())
    curves = sweep_curves(rep)
    assert [c.method for c in curves] == ["evict-sinks", "evict-snapkv"]
    cst = curve_styles(rep, curves)
    rows = {s.colour for s in styles(rep).values()}
    assert len({s.colour for s in cst}) == 2 and not rows & {s.colour for s in cst}
    assert all(s.marker and s.glyph for s in cst)
    saved = _capture_pngs(monkeypatch)
    paths = write_pngs(rep, tmp_path)
    assert any(p.name == "bench-sweep-kv.png" for p in paths)
    axes, legend = saved[-1]  # the sweep image is written last
    drawn = {to_hex(line.get_color()) for ax in axes for line in ax.get_lines()}
    assert {s.colour.lower() for s in cst} <= drawn
    assert not (drawn - {"#000000"}) & {c.lower() for c in rows}  # no row colour on a curve
    assert any(t.startswith("evict-sinks (window = 4, 32)") for t in legend)


def test_long_keys_are_short_tick_labels_with_the_full_key_in_the_legend(tmp_path, monkeypatch):
    from engine.bench.plot_data import MAX_LABEL_CHARS, short_label
    from engine.bench.plots import write_pngs

    assert short_label("kv-fp8") == "kv-fp8"
    key = "all-combined(cache.budget=40,cache.window=8,model.calib_tokens=2048,model.sparsity=0.5)"
    lab = short_label(key)
    assert lab != key and all(len(line) <= MAX_LABEL_CHARS for line in lab.split("\n"))
    assert len(lab.split("\n")) <= 2 and lab.endswith("…")
    assert short_label("evict-sinks(sinks=2,window=4)") == "evict-sinks(sinks=2,\nwindow=4)"
    rep = aggregate(_with_sweeps(long_key=True))
    assert key in [r.key for r in rep.rows]
    saved = _capture_pngs(monkeypatch)
    write_pngs(rep, tmp_path)
    axes, legend = saved[0]  # the dashboard image: bar panels labelled on the y axis
    ticks = [t.get_text() for t in axes[0].get_yticklabels()]
    assert lab in ticks and key not in ticks
    assert max(len(line) for t in ticks for line in t.split("\n")) <= MAX_LABEL_CHARS
    assert key in legend  # the full key
