"""What the plots draw, taken from the report's aggregates and nothing else (matplotlib PNGs in
``plots.py`` and the terminal plots in ``app/widgets/plots.py`` both read these), so a bar is the
table's ratio with the table's interval, and "n/a" is a drawn, labelled state, not a gap.

Each method keeps one colour and one marker across every plot, and each sweep curve gets its
own after them; colours never repeat however many rows and curves there are (a fixed,
distinguishable palette, then evenly spaced hues)."""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Any, Optional

from engine.bench.aggregate import COST_METRICS, QUALITY_METRICS, SPEED_METRICS, Report, Row
from engine.bench.stats import Interval, Ratio

# distinguishable colours first (Okabe–Ito, then Tableau), baseline always black
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442",
           "#8C564B", "#7F7F7F", "#BCBD22", "#17BECF", "#9467BD", "#E377C2", "#2CA02C",
           "#FF7F0E", "#1F77B4", "#D62728", "#AEC7E8"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p"]
#: the same markers as terminal characters (plotext draws any single character)
GLYPHS = dict(zip(MARKERS, ["●", "■", "▲", "◆", "▼", "✚", "✖", "★", "◀", "▶", "⬢", "⬟"]))
BASELINE_COLOUR = "#000000"


@dataclass
class Style:
    colour: str      # "#rrggbb"
    marker: str      # matplotlib marker
    rgb: tuple[int, int, int]

    @property
    def glyph(self) -> str:
        """The marker as a terminal character."""
        return GLYPHS.get(self.marker, "●")


def _style(colour: str, i: int) -> Style:
    """The ``i``-th non-baseline style: its colour, the marker cycle's ``i + 1``-th marker."""
    return Style(colour, MARKERS[(i + 1) % len(MARKERS)],
                 tuple(int(colour[j:j + 2], 16) for j in (1, 3, 5)))  # type: ignore[arg-type]


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{int(round(c * 255)):02x}" for c in rgb)


def colours(n: int) -> list[str]:
    """``n`` distinct colours: the palette, then hues spaced by the golden angle at two
    lightness levels (never equal to one already given)."""
    out = list(PALETTE[:n])
    i = 0
    while len(out) < n:
        h = (i * 0.618033988749895) % 1.0
        light = 0.45 if (i // 2) % 2 == 0 else 0.62
        c = _hex(colorsys.hls_to_rgb(h, light, 0.75))
        if c not in out and c != BASELINE_COLOUR:
            out.append(c)
        i += 1
    return out


def styles(rep: Report) -> dict[str, Style]:
    """Row key → its colour and marker (baseline black circles; the others in row order)."""
    others = [r.key for r in rep.rows if r.method != "baseline"]
    cs = colours(len(others))
    out: dict[str, Style] = {}
    for r in rep.rows:
        if r.method == "baseline":
            out[r.key] = Style(BASELINE_COLOUR, "o", (0, 0, 0))
    for i, key in enumerate(others):
        out[key] = _style(cs[i], i)
    return out


def curve_styles(rep: Report, curves: list) -> list[Style]:
    """One style per sweep curve (``sweep_curves``), in order: the palette's colours after the
    rows' ones, so a curve shares its colour with no row and no other curve (it used to take its
    first point's row colour, which that row also wears in every other plot); markers go on
    with the rows' cycle."""
    n = sum(1 for r in rep.rows if r.method != "baseline")
    cs = colours(n + len(curves))
    return [_style(cs[n + j], n + j) for j in range(len(curves))]


#: the longest row key drawn as a y tick label in the PNGs; longer keys are wrapped at their
#: parameter commas and, past MAX_LABEL_LINES, cut with "…" (the full key goes to the legend)
MAX_LABEL_CHARS = 28
MAX_LABEL_LINES = 2


def short_label(key: str, width: int = MAX_LABEL_CHARS, lines: int = MAX_LABEL_LINES) -> str:
    """``key`` as a tick label no wider than ``width`` characters: wrapped after the method name
    and between parameters, at most ``lines`` lines, the rest cut with "…"."""
    if len(key) <= width:
        return key
    head, sep, rest = key.partition("(")
    parts = [head + sep] + [p + "," for p in rest.split(",")] if sep else [key]
    if sep:
        parts[-1] = parts[-1][:-1]
    out: list[str] = []
    for part in parts:
        while len(part) > width:  # one piece wider than a line: split it hard
            out.append(part[:width])
            part = part[width:]
        if out and len(out[-1]) + len(part) <= width:
            out[-1] += part
        else:
            out.append(part)
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1][:width - 1] + "…"
    return "\n".join(out)


@dataclass
class Bar:
    """One bar: a value with its interval, or ``na`` (the reason) when there is no figure."""

    value: Optional[float] = None
    lo: Optional[float] = None
    hi: Optional[float] = None
    na: str = ""
    verdict: str = ""


# the panels of the dashboard image and the TUI's bars: cost ratios against the baseline
TIME_METRICS = ("prefill_s", "total_s", "decode_tok_s")
TOKEN_METRICS = ("prompt_tokens_effective",)
MEMORY_METRICS = ("kv_bytes_allocated", "kv_copy_bytes_per_token", "mem_hwm_delta_bytes",
                  "kv_bytes_stored")
BAR_METRICS = TOKEN_METRICS + ("prefill_s", "decode_tok_s", "total_s", "kv_bytes_allocated",
                               "kv_bytes_stored")


def ratio_bar(row: Row, m: str) -> Bar:
    """The table's ratio cell as a bar (baseline = 1 exactly)."""
    if row.speed_note and m in SPEED_METRICS:
        return Bar(na=row.speed_note)
    if row.method == "baseline":
        return Bar(1.0, 1.0, 1.0) if row.cost.get(m) and row.cost[m].median is not None else Bar(na="no figure")
    r = row.ratio.get(m, Ratio())
    if r.value is None:
        return Bar(na="no figure")
    return Bar(r.value, r.lo, r.hi, verdict=r.verdict)


def bar_groups(rep: Report, metrics: tuple[str, ...] = BAR_METRICS) -> tuple[list[str], dict[str, list[Bar]]]:
    """Grouped bars: per metric, each row's paired ratio to the baseline with its interval
    (1.0 = baseline), so different units share one axis."""
    series = {row.key: [ratio_bar(row, m) for m in metrics] for row in rep.rows}
    return [COST_METRICS[m][0] for m in metrics], series


def memory_metric(rep: Report) -> str:
    """The memory figure the scatter uses: the cache's real allocation when the records have it,
    else the counted bytes (older runs files)."""
    have = any(r.ratio.get("kv_bytes_allocated", Ratio()).value is not None for r in rep.rows)
    return "kv_bytes_allocated" if have else "kv_bytes_stored"


def scatter_points(rep: Report) -> list[tuple[str, Bar, Interval]]:
    """(row key, memory ratio vs baseline with CI, KL mean over queries with CI) for rows with both."""
    m = memory_metric(rep)
    pts = []
    for row in rep.rows:
        x = ratio_bar(row, m)
        y = row.quality.get("kl_mean", Interval())
        if x.value is not None and y.value is not None:
            pts.append((row.key, x, y))
    return pts


QUALITY_BARS = ("kl_mean", "top1_agree", "contains", "ref_nll", "rouge_l")


def quality_bars(rep: Report, metrics: tuple[str, ...] = QUALITY_BARS) -> tuple[list[str], dict[str, list[Bar]]]:
    """Per quality figure, each row's mean over queries with its interval ("n/a" when the row
    has no such figure, e.g. no reference answers among its queries)."""
    series = {}
    for row in rep.rows:
        bars = []
        for m in metrics:
            iv = row.quality.get(m, Interval())
            bars.append(Bar(na="no figure") if iv.value is None else Bar(iv.value, iv.lo, iv.hi))
        series[row.key] = bars
    return [QUALITY_METRICS[m][0] for m in metrics], series


#: a ratio panel whose figures (interval ends included) span more than this factor is drawn on a
#: log axis: a reserved buffer at 27x beside evictions at 0.25x flattens every other bar on a
#: linear one
LOG_SPAN = 20.0


@dataclass
class RatioAxis:
    """How a ratio panel's value axis is drawn: ``log`` with its ``floor`` (bars start there),
    else linear from 0; ``top`` is the largest figure (or the reference line)."""

    log: bool
    floor: float
    top: float

    @property
    def label(self) -> str:
        """Said beside the panel's title or axis so the reader sees the scale."""
        return "log scale" if self.log else ""


def ratio_axis(bars: Any, ref: Optional[float] = 1.0) -> RatioAxis:
    """The axis of a panel of ratios against the baseline (``ref`` = 1, drawn as a line): log
    when its figures span more than ``LOG_SPAN`` and all are positive. The PNGs
    (``plots._hbars``) and the terminal's ratio chart decide with this one rule. A panel with
    no reference line (quality means) is always linear."""
    have = [b for b in bars if b.value is not None]
    top = max([b.hi if b.hi is not None else b.value for b in have] + [ref or 0.0, 1e-12])
    lows = [b.lo if b.lo is not None else b.value for b in have]
    log = ref is not None and bool(lows) and min(lows) > 0 and top / min(lows) > LOG_SPAN
    return RatioAxis(log, min(lows) / 1.5 if log else 0.0, top)


def err(bar: Bar) -> tuple[float, float]:
    """Lower and upper error-bar lengths (0 when there is no interval)."""
    if bar.value is None or bar.lo is None or bar.hi is None:
        return 0.0, 0.0
    return max(bar.value - bar.lo, 0.0), max(bar.hi - bar.value, 0.0)


# ---- compression sweeps (engine/bench/sweep.py) -------------------------------------------------
#: the quality figures a sweep curve is drawn for (y), in the table's terms
SWEEP_Y = ("kl_mean", "top1_agree", "contains", "rouge_l", "ref_nll")
#: what the x axis measures, per ``RatioParam.measure``
MEASURE_LABELS = {
    "kv": "KV bytes held, share removed (1 − KV allocated ÷ baseline)",
    "prompt": "prompt tokens, share removed (1 − prompt tokens fed ÷ baseline)",
    "sparsity": "activation sparsity at model level (measured)",
}


@dataclass
class SweepPoint:
    """One value of a sweep: its row, the compression it achieved (``x``: the share removed,
    with its 95 % interval over queries) and its quality figures (``y``: the table's means with
    their intervals)."""

    key: str
    value: Any
    x: Bar
    y: dict[str, Bar]


@dataclass
class SweepCurve:
    method: str
    param: str
    measure: str
    points: list[SweepPoint]

    @property
    def x_label(self) -> str:
        return MEASURE_LABELS.get(self.measure, self.measure)


def achieved(rep: Report, row: Row, measure: str) -> Bar:
    """The compression a row achieved, as the share removed: from the table's paired ratio of
    the measured figure (KV allocated, or counted bytes for older runs files; prompt tokens fed)
    with its interval turned round (1 − hi … 1 − lo); or the measured model-level sparsity."""
    if measure == "sparsity":
        iv = row.sparsity
        if iv.value is None:
            return Bar(0.0, 0.0, 0.0) if row.method == "baseline" else Bar(na="no sparsity measured")
        return Bar(iv.value, iv.lo, iv.hi)
    m = memory_metric(rep) if measure == "kv" else "prompt_tokens_effective"
    r = ratio_bar(row, m)
    if r.value is None:
        return Bar(na=r.na or "no figure")
    lo = None if r.hi is None else 1.0 - r.hi
    hi = None if r.lo is None else 1.0 - r.lo
    return Bar(1.0 - r.value, lo, hi, verdict=r.verdict)


def quality_point(row: Row, metrics: tuple[str, ...] = SWEEP_Y) -> dict[str, Bar]:
    """The row's quality means with their intervals, as the table shows them."""
    out = {}
    for m in metrics:
        iv = row.quality.get(m, Interval())
        out[m] = Bar(na="no figure") if iv.value is None else Bar(iv.value, iv.lo, iv.hi)
    return out


def _num_key(v: Any) -> tuple:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, str(v))


def sweep_curves(rep: Report) -> list[SweepCurve]:
    """The sweeps a report holds, found from its rows alone (no sweep mode in the runs file): the
    rows of one method with a declared ratio parameter that differ only in that parameter, two or
    more of them, points in order of the parameter's value."""
    from engine.bench.methods.params import RATIO_PARAMS

    groups: dict[tuple, list[Row]] = {}
    for row in rep.rows:
        rp = RATIO_PARAMS.get(row.method)
        if rp is None or rp.key not in row.params:
            continue
        rest = tuple(sorted((k, repr(v)) for k, v in row.params.items() if k != rp.key))
        groups.setdefault((row.method, rest), []).append(row)
    curves = []
    for (method, _), rows in groups.items():
        rp = RATIO_PARAMS[method]
        if len({repr(r.params[rp.key]) for r in rows}) < 2:
            continue
        rows = sorted(rows, key=lambda r: _num_key(r.params[rp.key]))
        curves.append(SweepCurve(method, rp.key, rp.measure,
                                 [SweepPoint(r.key, r.params[rp.key], achieved(rep, r, rp.measure),
                                             quality_point(r)) for r in rows]))
    return curves


def baseline_point(rep: Report, measure: str) -> Optional[SweepPoint]:
    """The baseline at no compression, the curves' common origin (None without a baseline row)."""
    row = next((r for r in rep.rows if r.method == "baseline" and not r.params), None)
    if row is None:
        return None
    return SweepPoint(row.key, None, achieved(rep, row, measure), quality_point(row))


__all__ = ["BAR_METRICS", "Bar", "GLYPHS", "MAX_LABEL_CHARS", "curve_styles", "short_label",
           "LOG_SPAN", "RatioAxis", "ratio_axis", "MEMORY_METRICS", "QUALITY_BARS", "Style", "TIME_METRICS",
           "TOKEN_METRICS", "bar_groups", "colours", "err", "memory_metric", "quality_bars",
           "ratio_bar", "scatter_points", "styles", "MEASURE_LABELS", "SWEEP_Y", "SweepCurve",
           "SweepPoint", "achieved", "baseline_point", "quality_point", "sweep_curves"]
