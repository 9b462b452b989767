"""Report aggregation on a fixed JSONL fixture (figures chosen by hand; expectations recomputed
by brute force), bootstrap verdict rules, CSV / Markdown / PNG export and the CLI report."""
from __future__ import annotations

import csv
import io
import json
import statistics
from pathlib import Path

import pytest

from engine.bench.records import read_records, validate_record
from engine.bench.plots import write_pngs
from engine.bench.report import aggregate, bar_groups, load_report, scatter_points, to_csv, to_markdown
from engine.bench.stats import bootstrap_ratio
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


def test_paired_ratios_and_verdicts():
    rep = load_report(FIXTURE)
    raw = [r for r in _raw() if r["status"] == "ok" and r["kind"] != "prose"]
    base = {(r["prompt_id"], r["repeat"]): r for r in raw if r["method"] == "baseline"}
    fp8 = [r for r in raw if r["method"] == "kv-fp8"]
    ratios = [r["cost"]["total_s"] / base[(r["prompt_id"], r["repeat"])]["cost"]["total_s"] for r in fp8]
    got = rep.row("kv-fp8").ratio["total_s"]
    assert got.value == pytest.approx(statistics.median(ratios))
    assert got.n == 9 and got.lo <= got.value <= got.hi
    assert got.verdict == "no clear difference"  # 0.86–1.24: interval contains 1
    assert rep.row("kv-reuse").ratio["total_s"].verdict == "faster"
    assert rep.row("kv-reuse").ratio["total_s"].hi < 1
    kv = rep.row("kv-fp8").ratio["kv_bytes_stored"]
    assert kv.verdict == "smaller" and 0.25 < kv.value < 0.26
    assert rep.row("kv-reuse").ratio["kv_bytes_stored"].value == 1.0
    assert rep.row("kv-reuse").ratio["kv_bytes_stored"].verdict == "no clear difference"


def test_quality_aggregates():
    rep = load_report(FIXTURE)
    fp8 = rep.row("kv-fp8")
    assert fp8.quality["kl_mean"].median == pytest.approx(0.02)
    assert fp8.diverged == pytest.approx(1 / 3)
    assert fp8.contains == pytest.approx(0.5)
    assert rep.row("baseline").quality["kl_mean"].median == 0
    assert rep.row("baseline").diverged == 0
    assert rep.row("baseline").prose["bpb"] == pytest.approx(1.1)


def test_bootstrap_rules():
    assert bootstrap_ratio([(0.5, 1.0)] * 6).verdict == "faster"
    assert bootstrap_ratio([(2.0, 1.0)] * 6).verdict == "slower"
    assert bootstrap_ratio([(0.5, 1.0)]).verdict == "too few pairs"
    mixed = bootstrap_ratio([(0.8, 1.0), (1.2, 1.0), (0.9, 1.0), (1.1, 1.0), (1.0, 1.0)])
    assert mixed.verdict == "no clear difference" and mixed.lo < 1 < mixed.hi
    assert bootstrap_ratio([(2.0, 1.0)] * 4, lower_is_better=False).verdict == "faster"
    assert bootstrap_ratio([]).value is None


def test_csv_markdown_and_plot_data():
    rep = load_report(FIXTURE)
    rows = list(csv.DictReader(io.StringIO(to_csv(rep))))
    assert [r["method"] for r in rows] == ["baseline", "kv-reuse", "kv-fp8"]
    assert rows[2]["kv_bytes_stored_verdict"] == "smaller"
    assert float(rows[0]["total_s_median"]) == pytest.approx(2.0)
    md = to_markdown(rep)
    assert "fixture-model" in md and "smaller" in md and md.count("\n|") >= 4
    pts = scatter_points(rep)
    assert {p[0] for p in pts} == {"baseline", "kv-reuse", "kv-fp8"}
    names, series = bar_groups(rep)
    assert series["baseline"] == [1.0] * len(names)
    assert series["kv-fp8"][names.index("KV stored")] < 0.3


def test_png_export(tmp_path):
    paths = write_pngs(load_report(FIXTURE), tmp_path / "png")
    assert len(paths) == 4
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
