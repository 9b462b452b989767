"""The ASR report as plain cells (shared by the CLI table and the TUI), Markdown, CSV and a PNG."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Optional

from engine.advtok.asr_report import AsrReport, JudgeRow, Rate


def pct(r: Rate) -> str:
    if r.value is None:
        return "—"
    return f"{100 * r.value:.1f}% [{100 * r.lo:.1f}–{100 * r.hi:.1f}]"


def pval(p: Optional[float]) -> str:
    if p is None:
        return "—"
    return f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def headers(rep: AsrReport) -> list[str]:
    h = ["judge", "category", "rows", "ASR canonical", "ASR adversarial"]
    for k in rep.ks:
        h += [f"ASR@{k} canonical", f"ASR@{k} adversarial"]
    return h + ["McNemar b/c", "p", "unparsed can/adv"]


def cells(rep: AsrReport, row: JudgeRow) -> list[str]:
    c = [row.judge, row.category or "all", str(row.rows), pct(row.asr["canonical"]),
         pct(row.asr["adversarial"])]
    for k in rep.ks:
        c += [pct(row.asr_at_k["canonical"][k]), pct(row.asr_at_k["adversarial"][k])]
    return c + [f"{row.mcnemar_b}/{row.mcnemar_c}", pval(row.mcnemar_p),
                f"{row.unparsed['canonical']}/{row.unparsed['adversarial']}"]


def footer(rep: AsrReport) -> list[str]:
    lines = []
    g = rep.gain
    if g.value is not None:
        lines.append(f"mean likelihood gain of the target (adversarial − canonical score): "
                     f"{g.value:+.4f} [{g.lo:+.4f}, {g.hi:+.4f}] over {g.n} rows")
    for pair, k in rep.kappa.items():
        a, b = pair.split("|")
        lines.append(f"Cohen's κ {a} vs {b}: " + ("—" if k is None else f"{k:.3f}"))
    lines.append("ASR: harmful samples / judged samples; ASR@k: rows with any of the first k "
                 "samples harmful; [95 % row-bootstrap interval]; McNemar: exact two-sided test "
                 f"of the paired row outcomes at k = {max(rep.ks)} (b: only adversarial "
                 "succeeds, c: only canonical)")
    return lines + [f"note: {n}" for n in rep.notes]


def to_markdown(rep: AsrReport) -> str:
    h = headers(rep)
    out = [f"_AdvTok ASR report · {rep.rows} rows · models {', '.join(rep.models) or '—'}_", "",
           "| " + " | ".join(h) + " |", "|" + "---|" * len(h)]
    out += ["| " + " | ".join(cells(rep, r)) + " |" for r in rep.table]
    return "\n".join(out + [""] + footer(rep)) + "\n"


def to_csv(rep: AsrReport) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["judge", "category", "rows", "side", "metric", "value", "lo", "hi", "n",
                "successes", "unparsed", "mcnemar_b", "mcnemar_c", "mcnemar_p"])
    for r in rep.table:
        for side in ("canonical", "adversarial"):
            metrics = [("asr", r.asr[side])] + [(f"asr@{k}", r.asr_at_k[side][k]) for k in rep.ks]
            for name, m in metrics:
                w.writerow([r.judge, r.category or "all", r.rows, side, name, m.value, m.lo, m.hi,
                            m.n, m.successes, r.unparsed[side], r.mcnemar_b, r.mcnemar_c,
                            r.mcnemar_p])
    g = rep.gain
    w.writerow(["", "all", rep.rows, "", "likelihood_gain", g.value, g.lo, g.hi, g.n, "", "", "",
                "", ""])
    for pair, k in rep.kappa.items():
        w.writerow([pair, "all", rep.rows, "", "cohen_kappa", k, "", "", "", "", "", "", "", ""])
    return buf.getvalue()


def write_png(rep: AsrReport, directory: Path | str) -> Path:
    """Bar chart: overall ASR@max-k canonical vs adversarial per judge, with 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.atomic import write_bytes

    k = max(rep.ks)
    rows = [r for r in rep.table if not r.category]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * max(1, len(rows)), 3.2), dpi=120)
    for i, r in enumerate(rows):
        for j, side in enumerate(("canonical", "adversarial")):
            m = r.asr_at_k[side][k]
            if m.value is None:
                continue
            ax.bar(i + (j - 0.5) * 0.38, 100 * m.value, 0.36, color=("#7f8c8d", "#c0392b")[j],
                   yerr=[[100 * (m.value - m.lo)], [100 * (m.hi - m.value)]], capsize=3,
                   label=side if i == 0 else None)
    ax.set_xticks(range(len(rows)), [r.judge for r in rows])
    ax.set_ylabel(f"ASR@{k} (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"AdvTok ASR, {rep.rows} rows", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    out = Path(directory) / "advtok-asr.png"
    write_bytes(out, buf.getvalue())
    return out
