"""The bench report as text: the table (Markdown, CSV, plain cells for the TUI and the CLI), the
per-query breakdown and the input/output pairs. The figures come from ``aggregate.py`` (one
computation for every front end and every plot); this module only formats them.

Cells: cost as median [IQR] over runs, then the paired ratio against the baseline with its
bootstrap 95 % interval over queries and a verdict word when the data carry one (``stats.py``);
quality as the mean over queries with its interval.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Optional

from engine.atomic import write_text
from engine.bench.aggregate import (COST_METRICS, QUALITY_METRICS, SPEED_METRICS, Report, Row,
                                    aggregate, load_report, row_key)
from engine.bench.plot_data import bar_groups, scatter_points  # noqa: F401  (re-exported)
from engine.bench.stats import MIN_QUERIES, NO_CLEAR, NOT_ENOUGH, Interval, Ratio, Stat
from engine.inert import printable


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


def verdict_text(r: Ratio) -> str:
    """The words after a ratio: the verdict, "not enough data", or nothing (no clear difference)."""
    if r.verdict in ("", NO_CLEAR):
        return ""
    if r.verdict == NOT_ENOUGH:
        return f" not enough data ({r.n} q)"
    return f" {r.verdict}"


def fmt_ratio(r: Ratio) -> str:
    if r.value is None:
        return "—"
    ci = "" if r.lo is None or r.lo == r.hi else f" ({r.lo:.2f}–{r.hi:.2f})"
    return f"×{r.value:.2f}{ci}{verdict_text(r)}"


def fmt_interval(iv: Interval, *, share: bool = False) -> str:
    """mean (lo–hi); a share as a percentage."""
    if iv.value is None:
        return "—"
    f = (lambda v: f"{v:.0%}") if share else fmt_num  # noqa: E731
    if iv.lo is None or iv.lo == iv.hi:
        return f(iv.value)
    return f"{f(iv.value)} ({f(iv.lo)}–{f(iv.hi)})"


# table column -> cost metric (None: a quality column)
TABLE_COST = {"prompt tok": "prompt_tokens_effective", "prefill s": "prefill_s",
              "decode tok/s": "decode_tok_s", "total s": "total_s",
              "KV allocated": "kv_bytes_allocated", "KV copied/tok": "kv_copy_bytes_per_token",
              "mem high-water Δ": "mem_hwm_delta_bytes", "KV counted": "kv_bytes_stored"}
TABLE_QUALITY = {"KL nats/tok": "kl_mean", "top-1 agree": "top1_agree", "diverged": "diverged",
                 "ref NLL": "ref_nll", "contains": "contains", "ROUGE-L": "rouge_l"}
TABLE_COLUMNS = ("method",) + tuple(TABLE_COST) + tuple(TABLE_QUALITY)
SHARES = {"top1_agree", "diverged", "contains", "ref_recall"}


def cost_cell(row: Row, m: str, *, ratio: bool = True) -> str:
    unit = COST_METRICS[m][1]
    if row.speed_note and m in SPEED_METRICS:
        return row.speed_note
    txt = fmtquartiles(row.cost.get(m, Stat()), unit)
    r = row.ratio.get(m, Ratio())
    if ratio and row.method != "baseline" and r.value is not None:
        txt += "\n" + fmt_ratio(r)
    return txt


def quality_cell(row: Row, m: str) -> str:
    txt = fmt_interval(row.quality.get(m, Interval()), share=m in SHARES)
    if m == "diverged" and row.first_divergence.median is not None:
        txt += f"\n(at {row.first_divergence.median:.0f})"
    if m == "contains" and row.prose.get("bpb") is not None:
        txt += f"\nbpb {row.prose['bpb']:.3f}"
    return txt


def table_rows(rep: Report, *, labels: bool = True) -> list[list[str]]:
    """Display cells per row, in ``TABLE_COLUMNS`` order. The first cell is the honest label
    (or the short method key when ``labels`` is False)."""
    out = []
    for row in rep.rows:
        cells = [row.label + (f" {row.params}" if row.params else "") if labels else row.key]
        cells += [cost_cell(row, m) for m in TABLE_COST.values()]
        cells += [quality_cell(row, m) for m in TABLE_QUALITY.values()]
        if row.errors:
            cells[0] += f"\n({row.errors} errors)"
        out.append(cells)
    return out


def needle_table(rep: Report) -> tuple[list[str], list[list[str]]]:
    """Header and rows of needle accuracy (found / asked) by planted-fact depth, long documents."""
    depths = sorted({d for r in rep.rows for d in r.needle})
    head = ["method"] + [f"depth {d:g}" for d in depths]
    rows = [[r.method] + [(f"{r.needle[d][0]}/{r.needle[d][1]}" if d in r.needle else "—") for d in depths]
            for r in rep.rows if r.needle]
    return head, rows


def breakdown_table(rep: Report, metric: str = "total_s") -> tuple[list[str], list[list[str]]]:
    """Per query (rows) × method (columns): the query's ratio against the baseline for a cost
    metric (its repeats averaged), and its KL — what each aggregate cell is made of."""
    queries: list[str] = []
    for r in rep.rows:
        queries += [q for q in r.per_query if q not in queries]
    head = ["query"] + [r.method for r in rep.rows if r.method != "baseline"]
    out = []
    for q in queries:
        cells = [q]
        for r in rep.rows:
            if r.method == "baseline":
                continue
            pq = r.per_query.get(q, {})
            ratio = pq.get("ratio", {}).get(metric)
            kl = pq.get("quality", {}).get("kl_mean")
            na = bool(r.speed_note) and metric in SPEED_METRICS
            cells.append(("n/a" if na else ("—" if ratio is None else f"×{ratio:.2f}"))
                         + ("" if kl is None else f" · KL {fmt_num(kl)}"))
        out.append(cells)
    return head, out


def legend_footnote() -> str:
    return ("Cells: cost = median [IQR] over runs; ×ratio vs baseline = geometric mean over queries "
            "of the paired ratio (a query's repeats averaged first), bootstrap 95 % CI over queries; "
            f"a verdict only when the CI excludes 1 and there are ≥ {MIN_QUERIES} queries "
            "(timings: and a steady load). Quality = mean over queries (bootstrap 95 % CI). "
            "KV counted = the cache's tensors summed; KV allocated = its storage, spare capacity "
            "included; KV copied/tok = bytes written into the cache per generated token; mem "
            "high-water Δ = process peak over its state before the run.")


def _md(cell: str) -> str:
    return cell.replace("|", "\\|").replace("\n", "<br>")


def to_markdown(rep: Report, *, io_pairs: bool = True) -> str:
    lines = ["| " + " | ".join(TABLE_COLUMNS) + " |", "|" + "---|" * len(TABLE_COLUMNS)]
    for cells in table_rows(rep):
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    head, needle = needle_table(rep)
    if needle:
        lines += ["", "Needle accuracy by planted-fact depth (long documents, greedy answer contains the fact):",
                  "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in needle]
    head, per_q = breakdown_table(rep)
    if per_q and len(head) > 1:
        lines += ["", "Per query: total time ÷ baseline (repeats averaged) · KL:", "",
                  "| " + " | ".join(_md(h) for h in head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(_md(c) for c in r) + " |" for r in per_q]
    sweeps = sweep_markdown(rep)
    if sweeps:
        lines += ["", sweeps]
    if io_pairs:
        pairs = io_pairs_markdown(rep)
        if pairs:
            lines += ["", pairs]
    lines += ["", f"_{_md(rep.footer())}_", legend_footnote()]
    return printable("\n".join(lines), multiline=True)  # read in a terminal: labels etc. inert


def io_pairs_markdown(rep: Report, *, limit: int = 2000) -> str:
    """What went in (the prompt as the method fed it, when stored) and what came out, per method
    and query, as collapsible blocks."""
    out = []
    for row in rep.rows:
        for q, pq in row.per_query.items():
            if pq.get("output") is None and pq.get("input") is None:
                continue
            body = []
            if pq.get("input"):
                body += ["input:", "```", str(pq["input"])[:limit], "```"]
            body += ["output:", "```", str(pq.get("output") or "")[:limit], "```"]
            out.append(f"<details><summary>{_md(row.key)} · {_md(q)}</summary>\n\n"
                       + "\n".join(body) + "\n\n</details>")
    return ("Inputs and outputs (repeat 0):\n\n" + "\n".join(out)) if out else ""


def _fmt_bar(b: Any, *, share: bool) -> str:
    if b.value is None:
        return f"n/a ({b.na})" if b.na else "—"
    return fmt_interval(Interval(b.value, b.lo, b.hi), share=share)


def sweep_tables(rep: Report) -> list[tuple[str, list[str], list[list[str]]]]:
    """Per compression sweep in the report (``plot_data.sweep_curves``): a title, the header and
    one row per value — the compression achieved (share removed, 95 % CI) and the quality means
    with their intervals, the very figures of the table's rows and of the sweep plots."""
    from engine.bench.plot_data import SWEEP_Y, baseline_point, sweep_curves

    out = []
    for c in sweep_curves(rep):
        head = [c.param, "compression achieved"] + [QUALITY_METRICS[m][0] for m in SWEEP_Y]
        rows = []
        base = baseline_point(rep, c.measure)
        pts = ([base] if base is not None else []) + c.points
        for p in pts:
            rows.append([("baseline" if p.value is None else str(p.value)),
                         _fmt_bar(p.x, share=True)]
                        + [_fmt_bar(p.y[m], share=m in SHARES) for m in SWEEP_Y])
        out.append((f"{c.method}: quality vs compression — {c.x_label}", head, rows))
    return out


def sweep_markdown(rep: Report) -> str:
    parts = []
    for title, head, rows in sweep_tables(rep):
        parts += [f"Sweep {title}:", "", "| " + " | ".join(_md(h) for h in head) + " |",
                  "|" + "---|" * len(head)]
        parts += ["| " + " | ".join(_md(c) for c in r) + " |" for r in rows]
        parts.append("")
    return "\n".join(parts).rstrip()


CSV_FIELDS = ["method", "label", "params", "model_changing", "speed_note", "ok", "errors"]


def to_csv(rep: Report) -> str:
    buf = io.StringIO()
    cols = list(CSV_FIELDS)
    for m in COST_METRICS:
        cols += [f"{m}_median", f"{m}_q1", f"{m}_q3", f"{m}_ratio", f"{m}_ratio_lo",
                 f"{m}_ratio_hi", f"{m}_ratio_queries", f"{m}_verdict"]
    for m in QUALITY_METRICS:
        cols += [f"{m}_mean", f"{m}_lo", f"{m}_hi", f"{m}_queries"]
    cols += ["sweep_param", "sweep_value", "compression_measure", "compression", "compression_lo",
             "compression_hi", "sparsity_measured", "sparsity_measured_lo", "sparsity_measured_hi"]
    cols += ["first_divergence_median", "prose_nll", "prose_ppl", "prose_bpb", "prose_baseline_bpb",
             "suite", "model", "dtype", "device", "torch", "transformers", "max_new_tokens",
             "loadavg_start", "loadavg_end", "timing_verdicts_off"]
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    from engine.bench.plot_data import sweep_curves

    swept = {p.key: (c, p) for c in sweep_curves(rep) for p in c.points}
    for row in rep.rows:
        d: dict[str, Any] = {"method": row.method, "label": row.label, "params": row_key("", row.params),
                             "model_changing": row.model_changing, "speed_note": row.speed_note,
                             "ok": row.ok, "errors": row.errors}
        for m in COST_METRICS:
            s, r = row.cost.get(m, Stat()), row.ratio.get(m, Ratio())
            speed_na = bool(row.speed_note) and m in SPEED_METRICS
            d.update({f"{m}_median": row.speed_note if speed_na else s.median, f"{m}_q1": s.q1,
                      f"{m}_q3": s.q3, f"{m}_ratio": r.value, f"{m}_ratio_lo": r.lo,
                      f"{m}_ratio_hi": r.hi, f"{m}_ratio_queries": r.n, f"{m}_verdict": r.verdict})
        for m in QUALITY_METRICS:
            iv = row.quality.get(m, Interval())
            d.update({f"{m}_mean": iv.value, f"{m}_lo": iv.lo, f"{m}_hi": iv.hi, f"{m}_queries": iv.n})
        if row.key in swept:  # a point of a compression sweep: the x its curves are drawn at
            c, p = swept[row.key]
            d.update({"sweep_param": c.param, "sweep_value": p.value, "compression_measure": c.measure,
                      "compression": p.x.value, "compression_lo": p.x.lo, "compression_hi": p.x.hi})
        d.update({"sparsity_measured": row.sparsity.value, "sparsity_measured_lo": row.sparsity.lo,
                  "sparsity_measured_hi": row.sparsity.hi})
        d.update({"first_divergence_median": row.first_divergence.median,
                  "prose_nll": row.prose.get("nll"), "prose_ppl": row.prose.get("ppl"),
                  "prose_bpb": row.prose.get("bpb"), "prose_baseline_bpb": row.prose.get("baseline_bpb"),
                  "suite": rep.suite, "model": rep.model.get("id"), "dtype": rep.model.get("dtype"),
                  "device": rep.env.get("device"), "torch": rep.env.get("torch"),
                  "transformers": rep.env.get("transformers"), "max_new_tokens": rep.max_new_tokens,
                  "loadavg_start": " ".join(map(str, rep.loadavg_start)),
                  "loadavg_end": " ".join(map(str, rep.loadavg_end)),
                  "timing_verdicts_off": rep.timing_verdicts_off})
        w.writerow(d)
    return buf.getvalue()


def write_csv(rep: Report, path: Path | str) -> Path:
    path = Path(path)
    write_text(path, to_csv(rep))
    return path


__all__ = ["Report", "Row", "TABLE_COLUMNS", "aggregate", "bar_groups", "breakdown_table",
           "io_pairs_markdown", "load_report", "needle_table", "scatter_points", "sweep_markdown",
           "sweep_tables", "table_rows",
           "to_csv", "to_markdown", "write_csv"]
