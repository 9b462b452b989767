"""Matplotlib PNGs of a bench report (Agg backend, written atomically): cost-vs-quality scatter,
grouped bars of medians against the baseline, decode speed against context length. The data comes
from ``report.scatter_points`` / ``report.bar_groups``, the same the terminal plots use."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from engine.atomic import write_bytes
from engine.bench.report import Report, bar_groups, scatter_points
from engine.bench.stats import Stat
from engine.errors import InputError


def write_pngs(rep: Report, out_dir: Path | str, *, prefix: str = "bench") -> list[Path]:
    """cost-vs-quality scatter, grouped bars of medians vs baseline, decode tok/s vs context."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--png {out_dir} is a file, expected a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.text(0.01, 0.01, rep.footer(), fontsize=6, color="#555555", wrap=True)
        fig.tight_layout(rect=(0, 0.06, 1, 1))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=130)
        plt.close(fig)
        p = out_dir / f"{prefix}-{name}.png"
        write_bytes(p, buf.getvalue())
        paths.append(p)

    # 1. combined figure: scatter + bars (the README image)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    _scatter(ax1, rep)
    _bars(ax2, rep)
    save(fig, rep.suite)
    fig, ax = plt.subplots(figsize=(7, 5))
    _scatter(ax, rep)
    save(fig, "cost-quality")
    fig, ax = plt.subplots(figsize=(8, 5))
    _bars(ax, rep)
    save(fig, "medians")
    fig, ax = plt.subplots(figsize=(7, 5))
    _curve(ax, rep)
    save(fig, "toks-vs-context")
    return paths


def _scatter(ax: Any, rep: Report) -> None:
    """Medians with IQR bars on both axes; points labelled by method (parameters are in the
    table), labels placed with a small offset that alternates to limit overlaps."""
    rows = {r.key: r for r in rep.rows}
    for i, (key, x, y) in enumerate(scatter_points(rep)):
        row = rows[key]
        c, q = row.cost.get("kv_bytes_stored", Stat()), row.quality.get("kl_mean", Stat())
        xerr = [[max(x - (c.q1 if c.q1 is not None else x), 0) / 2 ** 20],
                [max((c.q3 if c.q3 is not None else x) - x, 0) / 2 ** 20]]
        yerr = [[max(y - (q.q1 if q.q1 is not None else y), 0)], [max((q.q3 if q.q3 is not None else y) - y, 0)]]
        ax.errorbar([x / 2 ** 20], [y], xerr=xerr, yerr=yerr, fmt="o", ms=6, capsize=2, lw=0.8)
        ax.annotate(row.method, (x / 2 ** 20, y), fontsize=7, xytext=(6, -10 + 10 * (i % 3)),
                    textcoords="offset points")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_xlabel("KV bytes stored, median [IQR] (MiB)")
    ax.set_ylabel("teacher-forced KL vs baseline (nats/token, median [IQR])")
    ax.set_title("Cost vs quality (lower-left is better)")
    ax.grid(alpha=0.3)


def _bars(ax: Any, rep: Report) -> None:
    names, series = bar_groups(rep)
    k = max(1, len(series))
    width = 0.8 / k
    method = {r.key: r.method for r in rep.rows}
    for i, (key, vals) in enumerate(series.items()):
        xs = [j + i * width - 0.4 + width / 2 for j in range(len(names))]
        ax.bar(xs, vals, width=width, label=method.get(key, key))
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=15, fontsize=8)
    ax.set_ylabel("median ÷ baseline median")
    ax.set_title("Medians relative to baseline (decode tok/s: higher is faster)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: bars stay visible
    ax.grid(axis="y", alpha=0.3)


def _curve(ax: Any, rep: Report) -> None:
    for row in rep.rows:
        if row.curve and not row.speed_note:
            xs, ys = zip(*row.curve)
            ax.plot(xs, ys, marker="o", ms=3, lw=1, label=row.key)
    ax.set_xlabel("prompt tokens in")
    ax.set_ylabel("decode tok/s")
    ax.set_title("Decode speed vs context length")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
