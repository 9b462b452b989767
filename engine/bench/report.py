"""Aggregates of bench JSONL records, computed at read time (the JSONL stays the truth).

Per method row: medians with interquartile range of every cost figure; quality medians; ratios
against the baseline from *paired* runs (same prompt, same repeat index, same model and
max_new_tokens), summarised by the median paired ratio with a bootstrap 95 % interval. A verdict
word ("faster", "smaller", "slower", "larger") is given only when that interval excludes 1.0;
otherwise the row says "no clear difference" (the statistics: ``stats.py``). Exports: the text
table, Markdown, CSV (one line per row), and the data the plots draw; the matplotlib PNGs, with a
footer naming model, device, library versions and the load average, are drawn in ``plots.py``.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from engine.atomic import write_text
from engine.bench.records import read_records
from engine.bench.stats import Ratio, Stat, bootstrap_ratio, quartiles
from engine.bench.suite_files import suite_entries
from engine.errors import InputError
from engine.inert import printable

# metric -> (label, unit, lower_is_better, verdict words (better, worse))
COST_METRICS: dict[str, tuple[str, str, bool, tuple[str, str]]] = {
    "prompt_tokens_effective": ("prompt tokens fed", "tok", True, ("fewer", "more")),
    "prefill_s": ("prefill (TTFT)", "s", True, ("faster", "slower")),
    "decode_tok_s": ("decode", "tok/s", False, ("faster", "slower")),
    "total_s": ("total", "s", True, ("faster", "slower")),
    "kv_bytes_stored": ("KV stored", "B", True, ("smaller", "larger")),
    "kv_bytes_peak": ("KV peak", "B", True, ("smaller", "larger")),
    "rss_peak_bytes": ("peak memory (RSS; CUDA allocator on GPU)", "B", True, ("smaller", "larger")),
    "aux_s": ("aux", "s", True, ("faster", "slower")),
}
SPEED_METRICS = {"prefill_s", "decode_tok_s", "total_s"}
QUALITY_METRICS = ("kl_mean", "top1_agree", "first_divergence", "ref_nll")


@dataclass
class Row:
    method: str
    label: str
    params: dict
    model_changing: bool
    speed_note: str
    ok: int = 0
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)
    cost: dict[str, Stat] = field(default_factory=dict)
    ratio: dict[str, Ratio] = field(default_factory=dict)
    quality: dict[str, Stat] = field(default_factory=dict)
    diverged: Optional[float] = None  # share of (query) outputs differing from the baseline's
    contains: Optional[float] = None  # share of qa/long outputs containing the reference
    prose: dict = field(default_factory=dict)  # nll / ppl / bpb (+ baseline's) on held-out prose
    curve: list[tuple[int, float]] = field(default_factory=list)  # (prompt tokens in, decode tok/s)
    needle: dict[float, tuple[int, int]] = field(default_factory=dict)  # depth → (found, asked)

    @property
    def key(self) -> str:
        return row_key(self.method, self.params)


@dataclass
class Report:
    rows: list[Row]
    suite: str
    model: dict
    env: dict
    max_new_tokens: int
    records: int
    loadavg_start: list
    loadavg_end: list
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, method: str) -> Optional[Row]:
        return next((r for r in self.rows if r.method == method), None)

    def footer(self) -> str:
        e = self.env
        la = lambda v: "/".join(f"{x:.2f}" for x in v) if v else "?"  # noqa: E731
        return (f"tokenforge bench · suite {self.suite} · {self.model.get('id')} "
                f"({self.model.get('dtype')}) · {e.get('device')} · torch {e.get('torch')} · "
                f"transformers {e.get('transformers')} · python {e.get('python')} · "
                f"{e.get('cpus', '?')} CPUs · load avg {la(self.loadavg_start)} → {la(self.loadavg_end)} · "
                f"max_new_tokens {self.max_new_tokens} · {self.records} records")


def row_key(method: str, params: dict) -> str:
    if not params:
        return method
    return method + "(" + ",".join(f"{k}={params[k]}" for k in sorted(params)) + ")"


def aggregate(records: list[dict], *, problems: Optional[list[str]] = None,
              suite: Optional[str] = None, model: Optional[str] = None,
              max_new_tokens: Optional[int] = None, kinds: Optional[list[str]] = None) -> Report:
    """Aggregate one (suite, model, max_new_tokens) slice of the records; by default the slice
    of the most recent record. Other slices are mentioned in ``notes``. ``kinds`` keeps only
    those query kinds (held-out prose records always stay: they carry bits per byte)."""
    if not records:
        raise InputError("no valid records to report on", "run `tokenforge bench` first")
    last = max(records, key=lambda r: r["time"])
    suite = suite or last["suite"]
    model = model or last["model"]["id"]
    mnt = max_new_tokens or last["max_new_tokens"]
    notes: list[str] = []
    sel = [r for r in records if r["suite"] == suite and r["model"]["id"] == model
           and r["max_new_tokens"] == mnt]
    other = len(records) - len(sel)
    if other:
        notes.append(f"{other} records of other suites/models/max_new_tokens not included")
    if not sel:
        raise InputError(f"no records for suite {suite}, model {model}, max_new_tokens {mnt}")
    if kinds:
        sel = [r for r in sel if r["kind"] in kinds or r["kind"] == "prose"]
        notes.append(f"query kinds: {', '.join(kinds)}")
        if not any(r["kind"] != "prose" for r in sel):
            raise InputError(f"no records of kind {', '.join(kinds)}")
    base = {(r["prompt_id"], r["repeat"]): r for r in sel
            if r["method"] == "baseline" and not r["params"] and r["status"] == "ok" and r["kind"] != "prose"}
    depths = _suite_depths(suite)
    rows: dict[str, Row] = {}
    order: list[str] = []
    for r in sel:
        k = row_key(r["method"], r["params"])
        if k not in rows:
            rows[k] = Row(r["method"], r["label"], r["params"], r["model_changing"], r["speed_note"])
            order.append(k)
    for k in order:
        row = rows[k]
        mine = [r for r in sel if row_key(r["method"], r["params"]) == k]
        ok = [r for r in mine if r["status"] == "ok" and r["kind"] != "prose"]
        errs = [r for r in mine if r["status"] == "error"]
        row.ok = len(ok)
        row.errors = len(errs)
        row.error_messages = sorted({f"{r['prompt_id']}: {r['message']}" for r in errs})[:5]
        for m, (_, _, lower, words) in COST_METRICS.items():
            row.cost[m] = quartiles([r["cost"].get(m) for r in ok])
            pairs = [(r["cost"].get(m), base[(r["prompt_id"], r["repeat"])]["cost"].get(m))
                     for r in ok if (r["prompt_id"], r["repeat"]) in base]
            row.ratio[m] = bootstrap_ratio([p for p in pairs if p[0] is not None and p[1] is not None],
                                           lower_is_better=lower, words=words)
        per_query: dict[str, dict] = {}
        for r in ok:
            per_query.setdefault(r["prompt_id"], r["quality"])
        for m in QUALITY_METRICS:
            if m == "first_divergence":
                continue
            row.quality[m] = quartiles([qd.get(m) for qd in per_query.values()])
        divs = [r["quality"].get("first_divergence") for r in ok if r["repeat"] == 0]
        if divs:
            row.diverged = sum(d is not None for d in divs) / len(divs)
            row.quality["first_divergence"] = quartiles([d for d in divs if d is not None])
        cont = [qd.get("contains") for qd in per_query.values() if qd.get("contains") is not None]
        row.contains = sum(cont) / len(cont) if cont else None
        for r in ok:  # needle accuracy by the planted fact's depth (greedy: repeat 0 speaks for all)
            depth = r["quality"].get("depth", depths.get(r["prompt_id"]))
            if r["kind"] == "long" and r["repeat"] == 0 and depth is not None \
                    and r["quality"].get("contains") is not None:
                hit, n = row.needle.get(float(depth), (0, 0))
                row.needle[float(depth)] = (hit + bool(r["quality"]["contains"]), n + 1)
        prose = [r for r in mine if r["kind"] == "prose" and r["status"] == "ok"]
        if prose:
            p = prose[-1]["quality"]
            row.prose = {k2: p.get(k2) for k2 in ("nll", "ppl", "bpb", "tokens", "bytes")}
            if isinstance(p.get("baseline"), dict):
                row.prose["baseline_bpb"] = p["baseline"].get("bpb")
                row.prose["baseline_ppl"] = p["baseline"].get("ppl")
        row.curve = sorted((r["cost"]["prompt_tokens_in"], r["cost"]["decode_tok_s"]) for r in ok
                           if r["cost"].get("prompt_tokens_in") and r["cost"].get("decode_tok_s"))
    rows_list = [rows[k] for k in order if rows[k].ok or rows[k].errors or rows[k].prose]
    rows_list.sort(key=lambda r: (r.method != "baseline", order.index(r.key)))
    loads = sorted(sel, key=lambda r: r["time"])
    env = dict(loads[-1]["env"])
    if "baseline" not in {r.method for r in rows_list}:
        notes.append("no baseline rows: ratios need `baseline` among the methods")
    return Report(rows=rows_list, suite=suite, model=dict(last["model"]), env=env, max_new_tokens=mnt,
                  records=len(sel), loadavg_start=loads[0]["env"].get("loadavg_start") or [],
                  loadavg_end=loads[-1]["env"].get("loadavg") or [], problems=list(problems or []),
                  notes=notes)


def _suite_depths(suite: str) -> dict[str, float]:
    """prompt id → planted-fact depth from the suite file (records written before depth was
    stored carry none); {} when the suite cannot be read."""
    out: dict[str, float] = {}
    for rec in suite_entries(suite):
        d = rec.get("meta").get("depth") if isinstance(rec.get("meta"), dict) else None
        if isinstance(d, (int, float)) and isinstance(rec.get("id"), str):
            out[rec["id"]] = float(d)
    return out


def needle_table(rep: Report) -> tuple[list[str], list[list[str]]]:
    """Header and rows of needle accuracy (found / asked) by planted-fact depth, long documents."""
    depths = sorted({d for r in rep.rows for d in r.needle})
    head = ["method"] + [f"depth {d:g}" for d in depths]
    rows = [[r.method] + [(f"{r.needle[d][0]}/{r.needle[d][1]}" if d in r.needle else "—") for d in depths]
            for r in rep.rows if r.needle]
    return head, rows


def load_report(path: Path | str, **kw: Any) -> Report:
    recs, problems = read_records(path)
    return aggregate(recs, problems=problems, **kw)


# ---- formatting (plain text; front ends style it) ----------------------------------------------

def fmt_num(v: Optional[float], unit: str = "") -> str:
    if v is None:
        return "—"
    if unit == "B":
        return f"{v / 2 ** 20:.2f} MiB" if abs(v) >= 2 ** 17 else f"{v / 1024:.1f} KiB"
    if unit == "tok":
        return f"{v:.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    if v == 0:
        return "0"
    return f"{v:.3g}"


def fmtquartiles(s: Stat, unit: str = "") -> str:
    if s.median is None:
        return "—"
    if s.q1 is None or s.q1 == s.q3:
        return fmt_num(s.median, unit)
    return f"{fmt_num(s.median, unit)} [{fmt_num(s.q1, unit)}–{fmt_num(s.q3, unit)}]"


def fmt_ratio(r: Ratio) -> str:
    if r.value is None:
        return "—"
    ci = "" if r.lo == r.hi else f" ({r.lo:.2f}–{r.hi:.2f})"
    word = f" {r.verdict}" if r.verdict not in ("no clear difference", "") else ""
    return f"×{r.value:.2f}{ci}{word}"


TABLE_COLUMNS = ("method", "prompt tok", "prefill s", "decode tok/s", "total s", "KV stored",
                 "KV peak", "KL nats/tok", "diverged", "ref NLL", "contains")


def table_rows(rep: Report, *, labels: bool = True) -> list[list[str]]:
    """Display cells per row: median [IQR] then, for non-baseline rows, a ratio line. The first
    cell is the honest label (or the short method key when ``labels`` is False)."""
    out = []
    for row in rep.rows:
        cells = [row.label + (f" {row.params}" if row.params else "") if labels else row.key]
        for m in ("prompt_tokens_effective", "prefill_s", "decode_tok_s", "total_s",
                  "kv_bytes_stored", "kv_bytes_peak"):
            unit = COST_METRICS[m][1]
            if row.speed_note and m in SPEED_METRICS:
                cells.append(row.speed_note)
                continue
            txt = fmtquartiles(row.cost[m], unit)
            if row.method != "baseline" and row.ratio[m].value is not None:
                txt += "\n" + fmt_ratio(row.ratio[m])
            cells.append(txt)
        kl = row.quality.get("kl_mean", Stat())
        cells.append(fmt_num(kl.median) if kl.median is not None else "—")
        cells.append("—" if row.diverged is None else
                     f"{row.diverged:.0%}" + (f" (at {row.quality['first_divergence'].median:.0f})"
                                              if row.quality.get("first_divergence", Stat()).median is not None else ""))
        cells.append(fmt_num(row.quality.get("ref_nll", Stat()).median))
        cells.append("—" if row.contains is None else f"{row.contains:.0%}")
        if row.prose.get("bpb") is not None:
            cells[-1] += f"\nbpb {row.prose['bpb']:.3f}"
        if row.errors:
            cells[0] += f"\n({row.errors} errors)"
        out.append(cells)
    return out


def to_markdown(rep: Report) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for cells in table_rows(rep):
        lines.append("| " + " | ".join(c.replace("\n", "<br>") for c in cells) + " |")
    head, needle = needle_table(rep)
    if needle:
        lines += ["", "Needle accuracy by planted-fact depth (long documents, greedy answer contains the fact):",
                  "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in needle]
    lines.append("")
    lines.append(f"_{rep.footer()}_")
    lines.append("Cells: median [IQR]; ×ratio vs baseline (median of paired runs, bootstrap 95 % CI); "
                 "a verdict word only when the CI excludes 1.")
    return printable("\n".join(lines), multiline=True)  # read in a terminal: labels etc. inert


CSV_FIELDS = ["method", "label", "params", "model_changing", "speed_note", "ok", "errors"]


def to_csv(rep: Report) -> str:
    buf = io.StringIO()
    cols = list(CSV_FIELDS)
    for m in COST_METRICS:
        cols += [f"{m}_median", f"{m}_q1", f"{m}_q3", f"{m}_ratio", f"{m}_ratio_lo",
                 f"{m}_ratio_hi", f"{m}_verdict"]
    for m in QUALITY_METRICS:
        cols += [f"{m}_median", f"{m}_q1", f"{m}_q3"]
    cols += ["diverged_share", "contains_share", "prose_nll", "prose_ppl", "prose_bpb",
             "prose_baseline_bpb", "suite", "model", "dtype", "device", "torch", "transformers",
             "max_new_tokens", "loadavg_start", "loadavg_end"]
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for row in rep.rows:
        d: dict[str, Any] = {"method": row.method, "label": row.label, "params": row_key("", row.params),
                             "model_changing": row.model_changing, "speed_note": row.speed_note,
                             "ok": row.ok, "errors": row.errors}
        for m in COST_METRICS:
            s, r = row.cost[m], row.ratio[m]
            speed_na = bool(row.speed_note) and m in SPEED_METRICS
            d.update({f"{m}_median": row.speed_note if speed_na else s.median, f"{m}_q1": s.q1,
                      f"{m}_q3": s.q3, f"{m}_ratio": r.value, f"{m}_ratio_lo": r.lo,
                      f"{m}_ratio_hi": r.hi, f"{m}_verdict": r.verdict})
        for m in QUALITY_METRICS:
            s = row.quality.get(m, Stat())
            d.update({f"{m}_median": s.median, f"{m}_q1": s.q1, f"{m}_q3": s.q3})
        d.update({"diverged_share": row.diverged, "contains_share": row.contains,
                  "prose_nll": row.prose.get("nll"), "prose_ppl": row.prose.get("ppl"),
                  "prose_bpb": row.prose.get("bpb"), "prose_baseline_bpb": row.prose.get("baseline_bpb"),
                  "suite": rep.suite, "model": rep.model.get("id"), "dtype": rep.model.get("dtype"),
                  "device": rep.env.get("device"), "torch": rep.env.get("torch"),
                  "transformers": rep.env.get("transformers"), "max_new_tokens": rep.max_new_tokens,
                  "loadavg_start": " ".join(map(str, rep.loadavg_start)),
                  "loadavg_end": " ".join(map(str, rep.loadavg_end))})
        w.writerow(d)
    return buf.getvalue()


def write_csv(rep: Report, path: Path | str) -> Path:
    path = Path(path)
    write_text(path, to_csv(rep))
    return path


# ---- plots (shared data for matplotlib PNGs and the terminal widget) ----------------------------

def scatter_points(rep: Report, cost: str = "kv_bytes_stored") -> list[tuple[str, float, float]]:
    """(row key, cost median, KL median) for rows with both."""
    pts = []
    for row in rep.rows:
        c = row.cost.get(cost, Stat()).median
        q = row.quality.get("kl_mean", Stat()).median
        if c is not None and q is not None:
            pts.append((row.key, float(c), float(q)))
    return pts


BAR_METRICS = ("prompt_tokens_effective", "prefill_s", "decode_tok_s", "total_s", "kv_bytes_stored")


def bar_groups(rep: Report) -> tuple[list[str], dict[str, list[float]]]:
    """Grouped bars: per metric, each row's median as a multiple of the baseline's median
    (1.0 = baseline), so different units share one axis. Speed metrics of rows with a
    speed_note are 0 (no figure)."""
    baseline = rep.row("baseline")
    metrics = list(BAR_METRICS)
    series: dict[str, list[float]] = {}
    for row in rep.rows:
        vals = []
        for m in metrics:
            b = baseline.cost[m].median if baseline else None
            v = row.cost[m].median
            if row.speed_note and m in SPEED_METRICS or v is None or not b:
                vals.append(0.0)
            else:
                vals.append(float(v) / float(b))
        series[row.key] = vals
    return [COST_METRICS[m][0] for m in metrics], series


__all__ = ["Report", "Row", "aggregate", "load_report", "to_csv", "write_csv", "to_markdown",
           "table_rows", "scatter_points", "bar_groups", "needle_table", "TABLE_COLUMNS"]
