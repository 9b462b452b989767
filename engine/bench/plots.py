"""Matplotlib PNGs of a bench report (Agg backend, written atomically). Everything drawn comes
from ``plot_data.py``, i.e. from the aggregates the table shows, with the same intervals:

- ``PREFIX-SUITE.png``: the dashboard — time, tokens, memory and quality side by side;
- ``PREFIX-ratios.png``: every cost ratio against the baseline, one panel per figure;
- ``PREFIX-cost-quality.png``: memory ratio against KL, both with their 95 % intervals;
- ``PREFIX-quality.png``: KL, top-1 agreement, containment and reference NLL with intervals;
- ``PREFIX-toks-vs-context.png``: per query, the median decode speed over its repeats, joined in
  order of context length;
- ``PREFIX-sweep-MEASURE.png`` (runs holding a compression sweep): quality against the
  compression achieved (KV bytes held, prompt tokens kept, sparsity), as kvpress reports it.

A method keeps its colour and marker in every image, and each sweep curve has its own (no row's);
legends sit outside the axes; a long row key is a shortened tick label with the full key in the
legend; a figure a method does not have ("n/a: no sparse kernel") is drawn as a labelled hatched
bar."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from engine.atomic import write_bytes
from engine.bench.aggregate import COST_METRICS, Report
from engine.bench.plot_data import (Bar, bar_groups, err, memory_metric, quality_bars, ratio_axis,
                                    ratio_bar, scatter_points, short_label, styles)
from engine.errors import InputError

RATIO_PANELS = ("prompt_tokens_effective", "prefill_s", "decode_tok_s", "total_s",
                "kv_bytes_allocated", "kv_copy_bytes_per_token", "mem_hwm_delta_bytes",
                "kv_bytes_stored")


def write_pngs(rep: Report, out_dir: Path | str, *, prefix: str = "bench") -> list[Path]:
    """The images above, into ``out_dir`` (created)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--png {out_dir} is a file, expected a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    st = styles(rep)
    n = max(1, len(rep.rows))

    def save(fig: Any, name: str, legend: bool = False, handles: Any = None) -> None:
        if legend and handles is None:
            handles = [plt.Line2D([], [], color=st[r.key].colour, marker=st[r.key].marker, ls="",
                                  label=r.key) for r in rep.rows]
        legend = legend or handles is not None
        if legend:  # outside the axes, on the right
            fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.83, 0.95), fontsize=7,
                       frameon=False)
        fig.text(0.01, 0.01, rep.footer(), fontsize=6, color="#555555", wrap=True)
        fig.tight_layout(rect=(0, 0.06, 0.82 if legend else 1, 1))
        buf = io.BytesIO()
        # a long key in the legend may reach past the figure's edge: the image grows to hold it
        fig.savefig(buf, format="png", dpi=130, bbox_inches="tight" if legend else None)
        plt.close(fig)
        p = out_dir / f"{prefix}-{name}.png"
        write_bytes(p, buf.getvalue())
        paths.append(p)

    height = 1.6 + 0.32 * n
    # bar panels label their rows on the y axis, shortened (short_label) so a long key does not
    # squeeze the panels; when one is shortened, the legend gives every full key
    full_keys = any(short_label(r.key) != r.key for r in rep.rows)
    # 1. the dashboard: time, tokens, memory, quality side by side
    fig, axes = plt.subplots(1, 4, figsize=(17, height), sharey=True)
    mem = memory_metric(rep)
    for ax, m in zip(axes[:3], ("total_s", "prompt_tokens_effective", mem)):
        _hbars(ax, rep, st, {r.key: ratio_bar(r, m) for r in rep.rows},
               f"{COST_METRICS[m][0]} ÷ baseline", ref=1.0)
    names, q = quality_bars(rep, ("kl_mean",))
    _hbars(axes[3], rep, st, {k: v[0] for k, v in q.items()}, names[0] + " (mean, 95 % CI)", ref=None)
    save(fig, rep.suite, legend=full_keys)
    # 2. every cost ratio
    cols = 4
    rows = -(-len(RATIO_PANELS) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(17, rows * height), sharey=True, squeeze=False)
    for ax, m in zip(axes.flat, RATIO_PANELS):
        _, series = bar_groups(rep, (m,))
        _hbars(ax, rep, st, {k: v[0] for k, v in series.items()}, f"{COST_METRICS[m][0]} ÷ baseline",
               ref=1.0)
    save(fig, "ratios", legend=full_keys)
    # 3. cost vs quality
    fig, ax = plt.subplots(figsize=(9, 5))
    _scatter(ax, rep, st)
    save(fig, "cost-quality", legend=True)
    # 4. quality
    names, q = quality_bars(rep)
    fig, axes = plt.subplots(1, len(names), figsize=(17, height), sharey=True)
    for j, (ax, name) in enumerate(zip(axes, names)):
        _hbars(ax, rep, st, {k: v[j] for k, v in q.items()}, f"{name} (mean, 95 % CI)", ref=None)
    save(fig, "quality", legend=full_keys)
    # 5. decode speed against context length
    fig, ax = plt.subplots(figsize=(9, 5))
    _curve(ax, rep, st)
    save(fig, "toks-vs-context", legend=True)
    # 6. quality against compression, when the runs hold a sweep
    _sweep_pngs(rep, st, save, plt)
    return paths


def _hbars(ax: Any, rep: Report, st: dict, bars: dict[str, Bar], title: str, ref: Any) -> None:
    """One horizontal bar per method with its interval; "n/a" drawn hatched and labelled."""
    keys = [r.key for r in rep.rows]
    ys = list(range(len(keys)))[::-1]
    # a panel spanning more than LOG_SPAN goes to a log axis from its floor (plot_data.ratio_axis,
    # the rule the terminal chart uses too)
    axis = ratio_axis(bars.values(), ref if ref == 1.0 else None)
    log, floor, top = axis.log, axis.floor, axis.top
    if log:
        ax.set_xscale("log")
        title += f" ({axis.label})"
    for y, key in zip(ys, keys):
        b = bars.get(key, Bar(na="no figure"))
        s = st[key]
        if b.value is None:
            ax.barh(y, top - floor, left=floor, color="none", edgecolor="#999999", hatch="//", lw=0.5)
            ax.text(floor if log else top * 0.02, y, f"n/a: {b.na.removeprefix('n/a: ')}",
                    va="center", fontsize=6, color="#555555")
            continue
        lo, hi = err(b)
        ax.barh(y, b.value - floor, left=floor, color=s.colour, alpha=0.8)
        ax.errorbar([b.value], [y], xerr=[[lo], [hi]], fmt=s.marker, color="black", ms=3,
                    capsize=2, lw=0.8)
        word = b.verdict if b.verdict not in ("", "no clear difference") else ""
        ax.text(max(b.hi or b.value, b.value), y, f" {b.value:.3g}" + (f" {word}" if word else ""),
                va="center", fontsize=6)
    if ref is not None:
        ax.axvline(ref, color="black", lw=0.8, ls="--")
    ax.set_yticks(ys)
    ax.set_yticklabels([short_label(k) for k in keys], fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    if log:
        ax.set_xlim(left=floor, right=top * 4)
    else:
        ax.set_xlim(left=0, right=top * 1.35)


def _scatter(ax: Any, rep: Report, st: dict) -> None:
    """x: the memory ratio to the baseline (95 % CI over queries); y: KL mean (95 % CI)."""
    for key, x, y in scatter_points(rep):
        s = st[key]
        xl, xh = err(x)
        yl = 0.0 if y.lo is None else max(y.value - y.lo, 0.0)
        yh = 0.0 if y.hi is None else max(y.hi - y.value, 0.0)
        ax.errorbar([x.value], [y.value], xerr=[[xl], [xh]], yerr=[[yl], [yh]], fmt=s.marker,
                    color=s.colour, ms=7, capsize=2, lw=0.8, label=key)
    ax.axvline(1.0, color="black", lw=0.6, ls=":")
    ax.set_ylim(bottom=0)
    ax.set_xlim(left=0)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_xlabel(f"{COST_METRICS[memory_metric(rep)][0]} ÷ baseline (95 % CI over queries)")
    ax.set_ylabel("KL vs baseline, nats/token (mean, 95 % CI)")
    ax.set_title("Memory vs quality (lower-left is better)")
    ax.grid(alpha=0.3)


def _curve(ax: Any, rep: Report, st: dict) -> None:
    na = [f"{row.key}: {row.speed_note}" for row in rep.rows if row.speed_note]
    for row in rep.rows:
        s = st[row.key]
        if row.curve and not row.speed_note:
            xs, ys = zip(*row.curve)
            ax.plot(xs, ys, marker=s.marker, color=s.colour, ms=4, lw=1)
    if na:
        ax.text(0.01, 0.01, "not drawn, " + "; ".join(na), transform=ax.transAxes, fontsize=6,
                color="#555555", va="bottom")
    ax.set_xlabel("prompt tokens in (one point per query)")
    ax.set_ylabel("decode tok/s (median of the query's repeats)")
    ax.set_title("Decode speed vs context length")
    ax.grid(alpha=0.3)


def _sweep_pngs(rep: Report, st: dict, save: Any, plt: Any) -> None:
    """``PREFIX-sweep-MEASURE.png``: quality against the compression achieved, one figure per
    kind of compression (KV bytes, prompt tokens, sparsity), one panel per quality figure; each
    point with its 95 % intervals on both axes, a curve per swept method joined in order of
    compression, the baseline at the origin; a point without a figure is listed as n/a."""
    from engine.bench.aggregate import QUALITY_METRICS
    from engine.bench.plot_data import SWEEP_Y, baseline_point, curve_styles, sweep_curves

    curves = sweep_curves(rep)
    cst = {id(c): s for c, s in zip(curves, curve_styles(rep, curves))}  # a colour per curve
    for measure in dict.fromkeys(c.measure for c in curves):
        mine = [c for c in curves if c.measure == measure]
        metrics = [m for m in SWEEP_Y if any(p.y[m].value is not None for c in mine for p in c.points)]
        if not metrics:
            metrics = ["kl_mean"]
        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics) + 2.5, 4.2), squeeze=False)
        base = baseline_point(rep, measure)
        handles = []
        for ax, m in zip(axes[0], metrics):
            na: list[str] = []
            for c in mine:
                s = cst[id(c)]
                pts = []
                for p in c.points:
                    x, y = p.x, p.y[m]
                    if x.value is None or y.value is None:
                        na.append(f"{c.method} {c.param}={p.value}: "
                                  f"{(x.na or y.na).removeprefix('n/a: ')}")
                        continue
                    pts.append((x, y, p.value))
                pts.sort(key=lambda t: t[0].value)
                if not pts:
                    continue
                xs, ys = [x.value for x, _, _ in pts], [y.value for _, y, _ in pts]
                xe = [list(v) for v in zip(*[err(x) for x, _, _ in pts])]
                ye = [list(v) for v in zip(*[err(y) for _, y, _ in pts])]
                ax.plot(xs, ys, color=s.colour, lw=1)
                ax.errorbar(xs, ys, xerr=xe, yerr=ye, fmt=s.marker, color=s.colour, ms=5, capsize=2,
                            lw=0.8, ls="")
                for x, y, v in pts:
                    ax.annotate(str(v), (x.value, y.value), fontsize=6, xytext=(3, 3),
                                textcoords="offset points", color=s.colour)
            if base is not None and base.x.value is not None and base.y[m].value is not None:
                ax.plot([base.x.value], [base.y[m].value], marker="o", color="black", ls="")
            if na:
                ax.text(0.01, 0.01, "n/a: " + "; ".join(na), transform=ax.transAxes, fontsize=6,
                        color="#555555", va="bottom", wrap=True)
            ax.set_title(f"{QUALITY_METRICS[m][0]} (mean, 95 % CI)", fontsize=8)
            ax.set_xlabel("compression achieved (95 % CI over queries)", fontsize=7)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        for c in mine:
            s = cst[id(c)]
            handles.append(plt.Line2D([], [], color=s.colour, marker=s.marker,
                                      label=f"{c.method} ({c.param} = "
                                            + ", ".join(str(p.value) for p in c.points) + ")"))
        if base is not None:
            handles.append(plt.Line2D([], [], color="black", marker="o", ls="", label="baseline"))
        fig.suptitle(f"Quality vs compression — x: {mine[0].x_label}", fontsize=9)
        save(fig, f"sweep-{measure}", handles=handles)
