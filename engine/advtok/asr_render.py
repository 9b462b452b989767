"""The ASR report as plain cells — shared by the CLI table, the TUI, Markdown, CSV, a fixed-width
text table for pipes and logs, and a PNG. UI-free: strings and lists in, strings out.

Two tables: the headline (paired ΔASR per judge with its interval, overall then per category,
and the exact McNemar test) and the detail (each side's rate with its interval and n, and the
bounds with unparsed verdicts counted as safe / as harmful). Every figure carries its n."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional

from engine.advtok.asr_report import SIDES, AsrReport, Counts, JudgeRow, Metric, Rate
from engine.inert import printable

NA = "n/a"


def _n(r: Rate) -> str:
    return f"n={r.n}"


def pct(r: Rate) -> str:
    """``45.0% [30.1–60.2] n=40`` (n in the rate's units); ``— n=0`` when there is nothing."""
    if r.value is None:
        return f"— {_n(r)}"
    return f"{100 * r.value:.1f}% [{100 * r.lo:.1f}–{100 * r.hi:.1f}] {_n(r)}"


def pp(r: Rate) -> str:
    """A difference in percentage points: ``+12.5 pp [+3.1, +20.0] n=20``."""
    if r.value is None:
        return f"— {_n(r)}"
    return f"{100 * r.value:+.1f} pp [{100 * r.lo:+.1f}, {100 * r.hi:+.1f}] {_n(r)}"


def bounds(m: Metric, side: str) -> str:
    lo, hi = m.lower[side], m.upper[side]
    if lo is None or hi is None:
        return "—"
    return f"{100 * lo:.1f}–{100 * hi:.1f}%"


def pval(p: Optional[float]) -> str:
    if p is None:
        return NA
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def kappa_cell(value: Optional[float], n: int) -> str:
    return f"{NA} n={n}" if value is None else f"{round(value, 3) + 0.0:.3f} n={n}"


def counts_cell(c: Counts) -> str:
    return f"{c.harmful} harmful · {c.safe} safe · {c.unparsed} unparsed · {c.not_judged} not judged"


# ---------------------------------------------------------------------- the two tables
def headline_headers(rep: AsrReport) -> list[str]:
    return (["judge", "category", "rows", "ΔASR (n rows)"]
            + [f"ΔASR@{k} (n rows)" for k in rep.ks]
            + [f"McNemar @{max(rep.ks)} b/c (n rows)", "p"])


def headline_cells(rep: AsrReport, row: JudgeRow) -> list[str]:
    return ([printable(row.judge), printable(row.category or "all"), str(row.rows)]
            + [pp(m.delta) for m in row.metrics]
            + [f"{row.mcnemar_b}/{row.mcnemar_c} n={row.mcnemar_n}", pval(row.mcnemar_p)])


def detail_headers(rep: AsrReport) -> list[str]:
    return ["judge", "category", "metric", "canonical", "adversarial",
            "bounds canonical", "bounds adversarial"]


def detail_rows(rep: AsrReport, row: JudgeRow) -> list[list[str]]:
    """One line per metric (ASR, ASR@k…) and one with the verdict counts of each side."""
    judge, cat = printable(row.judge), printable(row.category or "all")
    out = []
    for m in row.metrics:
        out.append([judge, cat, m.name + (" (n samples)" if m.k is None else " (n rows)"),
                    pct(m.side["canonical"]), pct(m.side["adversarial"]),
                    bounds(m, "canonical"), bounds(m, "adversarial")])
    out.append([judge, cat, "verdicts (samples)", counts_cell(row.counts["canonical"]),
                counts_cell(row.counts["adversarial"]), "", ""])
    return out


def headline(rep: AsrReport) -> tuple[list[str], list[list[str]]]:
    """The headline table: judges overall first, then each judge per category."""
    rows = [r for r in rep.table if not r.category] + [r for r in rep.table if r.category]
    return headline_headers(rep), [headline_cells(rep, r) for r in rows]


def detail(rep: AsrReport) -> tuple[list[str], list[list[str]]]:
    rows: list[list[str]] = []
    for r in rep.table:
        rows.extend(detail_rows(rep, r))
    return detail_headers(rep), rows


def title(rep: AsrReport) -> str:
    return printable(f"AdvTok ASR report · {rep.rows} rows · {rep.samples_per_side} samples per "
                     f"side · models {', '.join(rep.models) or '—'}")


def footer(rep: AsrReport) -> list[str]:
    lines = []
    g = rep.gain
    if g.value is not None:
        lines.append(f"mean likelihood gain of the target (adversarial − canonical score): "
                     f"{g.value:+.4f} [{g.lo:+.4f}, {g.hi:+.4f}] n={g.n} rows")
    for pair, k in rep.kappa.items():
        a, b = pair.split("|")
        lines.append(f"Cohen's κ {a} vs {b}: {kappa_cell(k.value, k.n)} samples both parsed")
    lines.append(
        "ΔASR: adversarial − canonical over the rows that have the rate on both sides, "
        "[95 % cluster-bootstrap interval over rows]. ASR: harmful / parsed samples; ASR@k: "
        "unbiased pass@k per row over its parsed samples (rows with ≥ k parsed); bounds: with "
        "unparsed verdicts counted as safe – as harmful. Intervals: Wilson where each row is "
        "one 0/1 unit or the rows do not vary, else BCa bootstrap over rows. McNemar: exact "
        f"test of one 0/1 outcome per row (any harmful among its first {max(rep.ks)} parsed "
        "samples; b: only adversarial succeeds, c: only canonical).")
    return [printable(x) for x in lines + [f"note: {n}" for n in rep.notes]]


# ---------------------------------------------------------------------- plain text, Markdown, CSV
def plain_table(headers: list[str], rows: list[list[str]]) -> str:
    """A fixed-width table: every cell whole, one line per row, however wide (for pipes, logs
    and files — nothing truncated, nothing wrapped)."""
    width = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
             for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, width)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in width])]
                     + [line(r) for r in rows]) + "\n"


def to_text(rep: AsrReport) -> str:
    """The whole report as plain fixed-width text."""
    h1, r1 = headline(rep)
    h2, r2 = detail(rep)
    return (title(rep) + "\n\n" + plain_table(h1, r1) + "\n" + plain_table(h2, r2) + "\n"
            + "\n".join(footer(rep)) + "\n")


def _md_cell(s: str) -> str:
    return s.replace("|", "\\|")


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(map(_md_cell, headers)) + " |", "|" + "---|" * len(headers)]
            + ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows])


def to_markdown(rep: AsrReport) -> str:
    h1, r1 = headline(rep)
    h2, r2 = detail(rep)
    out = [f"_{title(rep)}_", "", "**ΔASR (adversarial − canonical)**", ""] + _md_table(h1, r1)
    out += ["", "**Rates and bounds**", ""] + _md_table(h2, r2)
    return "\n".join(out + [""] + [f"{line}  " for line in footer(rep)]) + "\n"


CSV_HEADER = ["judge", "category", "rows", "metric", "side", "value", "lo", "hi", "n", "unit",
              "interval", "bound_unparsed_safe", "bound_unparsed_harmful", "harmful", "safe",
              "unparsed", "not_judged", "mcnemar_k", "mcnemar_n", "mcnemar_b", "mcnemar_c",
              "mcnemar_p"]


def to_csv(rep: AsrReport) -> str:
    """Long format: one line per judge × category × metric × side (canonical, adversarial and
    delta), each with its n and unit; then the likelihood gain and κ lines."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_HEADER)
    for r in rep.table:
        mc = [r.mcnemar_k, r.mcnemar_n, r.mcnemar_b, r.mcnemar_c, r.mcnemar_p]
        for m in r.metrics:
            for side in (*SIDES, "delta"):
                x = m.delta if side == "delta" else m.side[side]
                c = r.counts.get(side)
                w.writerow([r.judge, r.category or "all", r.rows, m.name.lower(), side, x.value,
                            x.lo, x.hi, x.n, x.unit, x.method,
                            m.lower.get(side, ""), m.upper.get(side, ""),
                            *( [c.harmful, c.safe, c.unparsed, c.not_judged] if c else [""] * 4),
                            *mc])
    g = rep.gain
    blank = [""] * (len(CSV_HEADER) - 11)
    w.writerow(["", "all", rep.rows, "likelihood_gain", "delta", g.value, g.lo, g.hi, g.n,
                g.unit, g.method, *blank])
    for pair, k in rep.kappa.items():
        w.writerow([pair, "all", rep.rows, "cohen_kappa", "", k.value if k.value is not None
                    else NA, "", "", k.n, "samples", "", *blank])
    return buf.getvalue()


def write_tables(rep: AsrReport, *, markdown: Optional[Path | str] = None,
                 csv_path: Optional[Path | str] = None) -> list[Path | str]:
    """The report as Markdown and/or CSV, each file written whole or not at all
    (engine.atomic: a refused disk is one StorageError naming the path). The one writer of
    ``attack report --markdown/--csv`` and of the TUI's report export. Returns the paths
    written, in that order."""
    from engine.atomic import write_text

    done: list[Path | str] = []
    for path, render in ((markdown, to_markdown), (csv_path, to_csv)):
        if path is not None:
            write_text(path, render(rep))
            done.append(path)
    return done


# ---------------------------------------------------------------------- PNG
def write_png(rep: AsrReport, directory: Path | str) -> Path:
    """Left: ΔASR and ΔASR@k per judge with 95 % intervals; right: ASR@k (largest k) per side.
    Every bar is labelled with its n."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.atomic import write_bytes

    k = max(rep.ks)
    rows = [r for r in rep.table if not r.category]
    width = 2.0 + 1.6 * max(1, len(rows))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(2 * width, 3.6), dpi=120)
    shown = [None, k]
    colours = ("#2c3e50", "#8e44ad")
    for i, r in enumerate(rows):
        for j, kk in enumerate(shown):
            d = r.metric(kk).delta
            if d.value is None:
                continue
            x = i + (j - 0.5) * 0.38
            ax1.bar(x, 100 * d.value, 0.36, color=colours[j],
                    yerr=[[100 * (d.value - d.lo)], [100 * (d.hi - d.value)]], capsize=3,
                    label=("ΔASR" if kk is None else f"ΔASR@{kk}") if i == 0 else None)
            ax1.annotate(f"n={d.n}", (x, 100 * d.hi), ha="center", va="bottom", fontsize=7)
        for j, side in enumerate(SIDES):
            m = r.metric(k).side[side]
            if m.value is None:
                continue
            x = i + (j - 0.5) * 0.38
            ax2.bar(x, 100 * m.value, 0.36, color=("#7f8c8d", "#c0392b")[j],
                    yerr=[[100 * (m.value - m.lo)], [100 * (m.hi - m.value)]], capsize=3,
                    label=side if i == 0 else None)
            ax2.annotate(f"n={m.n}", (x, 100 * m.hi), ha="center", va="bottom", fontsize=7)
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(rows)), [r.judge for r in rows])
        ax.legend(fontsize=8)
    ax1.axhline(0, color="black", linewidth=0.6)
    ax1.set_ylim(-105, 110)
    ax1.set_ylabel("adversarial − canonical (pp)")
    ax1.set_title(f"ΔASR, {rep.rows} rows (95 % interval)", fontsize=9)
    ax2.set_ylim(0, 110)
    ax2.set_ylabel(f"ASR@{k} (%)")
    ax2.set_title(f"ASR@{k} per side (n = rows)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    out = Path(directory) / "advtok-asr.png"
    write_bytes(out, buf.getvalue())
    return out
