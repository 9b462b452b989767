"""Terminal plots of a bench report (textual-plotext): memory vs quality, the cost ratios against
the baseline, quality, and decode tok/s vs context length — each point with its 95 % interval
drawn as an error bar.

The data comes from ``engine.bench.plot_data`` (torch-free), the same the PNG export draws, so
the terminal, the files and the table never disagree; every method keeps its colour there too.
plotext's own error bars are symmetric, so intervals are drawn as line segments from lo to hi.
Plots are rebuilt only when a new report is shown (docs/tui.md: plotext renders on the UI
thread; curves are downsampled to about 2x the width).
"""
from __future__ import annotations

from typing import Any

from textual_plotext import PlotextPlot

MAX_POINTS = 240


def downsample(points: list[tuple[float, float]], limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    """Every k-th point (keeping the last) so a curve never exceeds ``limit`` points."""
    if len(points) <= limit:
        return list(points)
    k = -(-len(points) // limit)
    out = points[::k]
    if out[-1] != points[-1]:
        out.append(points[-1])
    return out


class BenchPlot(PlotextPlot):
    """Base: holds the report shown; subclasses draw it in ``draw``."""

    title = ""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.report: Any = None
        self.drawn = 0  # how many times data was drawn (tests and the screen check it)
        self.na_labels: list[str] = []  # "n/a" states drawn as text (tests check them)
        self.intervals = 0  # interval segments drawn in the last show

    def show(self, report: Any) -> None:
        self.report = report
        self.na_labels = []
        self.intervals = 0
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.title)
        if report is None or not report.rows:
            plt.title(self.title + " — no data yet")
        else:
            self.draw(plt, report)
            self.drawn += 1
        self.refresh()

    def draw(self, plt: Any, report: Any) -> None:  # overridden
        raise NotImplementedError


def _segment(owner: BenchPlot, xs: list[float], ys: list[float], rgb: Any) -> None:
    owner.plt.plot(xs, ys, color=rgb, marker="braille")
    owner.intervals += 1


def _bars_with_ci(plt: Any, owner: BenchPlot, report: Any, names: list[str], series: dict,
                  floor: float = 0.0) -> None:
    """Dot per (group, method) at its value with a vertical 95 % interval; n/a as a label (at
    ``floor``: the bottom of a log axis)."""
    from engine.bench.plot_data import styles

    st = styles(report)
    keys = list(series)
    k = max(1, len(keys))
    width = 0.8 / k
    for i, key in enumerate(keys):
        rgb = st[key].rgb
        xs, ys = [], []
        for j, bar in enumerate(series[key]):
            x = j + i * width - 0.4 + width / 2
            if bar.value is None:
                plt.text("n/a", x, floor, color=rgb)
                owner.na_labels.append(f"{key}: {bar.na}")
                continue
            xs.append(x)
            ys.append(bar.value)
            if bar.lo is not None and bar.hi is not None and bar.hi > bar.lo:
                _segment(owner, [x, x], [bar.lo, bar.hi], rgb)
        if xs:
            plt.scatter(xs, ys, color=rgb, marker="dot", label=key)
    plt.xticks(list(range(len(names))), names)


class CostQualityPlot(BenchPlot):
    """x: memory ratio to the baseline; y: KL to the baseline; both with 95 % intervals."""

    title = "Memory ÷ baseline vs KL nats/token (95 % CI; lower-left is better)"

    def draw(self, plt: Any, report: Any) -> None:
        from engine.bench.plot_data import scatter_points, styles

        st = styles(report)
        for key, x, y in scatter_points(report):
            rgb = st[key].rgb
            if x.lo is not None and x.hi is not None and x.hi > x.lo:
                _segment(self, [x.lo, x.hi], [y.value, y.value], rgb)
            if y.lo is not None and y.hi is not None and y.hi > y.lo:
                _segment(self, [x.value, x.value], [y.lo, y.hi], rgb)
            plt.scatter([x.value], [y.value], label=key, marker="dot", color=rgb)
        plt.xlabel("memory ÷ baseline")
        plt.ylabel("KL (nats/token)")


class MedianBarsPlot(BenchPlot):
    """Per cost figure, each method's paired ratio to the baseline (1 = baseline) with its 95 %
    interval over queries — the table's ratio cell. Ratios spanning more than 20x go to a log
    axis, said in the title and the axis label (``plot_data.ratio_axis``: the PNGs' rule)."""

    title = "Cost ÷ baseline, 95 % CI (decode tok/s: higher is faster)"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.log_axis = False  # the last drawing used a log axis (tests read it)

    def draw(self, plt: Any, report: Any) -> None:
        from engine.bench.plot_data import bar_groups, ratio_axis

        names, series = bar_groups(report)
        axis = ratio_axis([b for bars in series.values() for b in bars])
        self.log_axis = axis.log
        if series:
            if axis.log:
                plt.yscale("log")
                plt.title(f"{self.title} · {axis.label}")
            _bars_with_ci(plt, self, report, names, series, floor=axis.floor)
            plt.hline(1.0)
            plt.ylabel("× baseline" + (f" ({axis.label})" if axis.log else ""))


class QualityPlot(BenchPlot):
    """KL, top-1 agreement, containment and reference NLL: mean over queries, 95 % interval."""

    title = "Quality: mean over queries, 95 % CI"

    def draw(self, plt: Any, report: Any) -> None:
        from engine.bench.plot_data import quality_bars

        names, series = quality_bars(report)
        if series:
            _bars_with_ci(plt, self, report, names, series)


class SpeedContextPlot(BenchPlot):
    """Decode tok/s against prompt length per method: one point per query (the median of its
    repeats), joined in order of context length."""

    title = "Decode tok/s vs prompt tokens (median per query)"

    def draw(self, plt: Any, report: Any) -> None:
        from engine.bench.plot_data import styles

        st = styles(report)
        for row in report.rows:
            if row.speed_note:
                self.na_labels.append(f"{row.key}: {row.speed_note}")
                continue
            if row.curve:
                pts = downsample(row.curve)
                plt.plot([p[0] for p in pts], [p[1] for p in pts], label=row.key, marker="dot",
                         color=st[row.key].rgb)
        if self.na_labels:
            plt.title(self.title + " · not drawn: " + "; ".join(self.na_labels))
        plt.xlabel("prompt tokens in")
        plt.ylabel("tok/s")


class SweepPlot(BenchPlot):
    """Quality against the compression achieved, for a runs file holding a compression sweep
    (``engine.bench.plot_data.sweep_curves``, the data of the sweep PNG and of the report's
    sweep table): one curve per swept method joined in order of compression, every point with
    its 95 % intervals on both axes, the baseline at the origin; KL on the y axis (top-1
    agreement when no point has a KL). A point without a figure is listed as n/a."""

    title = "Quality vs compression achieved (95 % CI)"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.curves: list = []  # the curves drawn last (tests read them)
        self.curve_styles: list = []  # their colours and markers
        self.metric = "kl_mean"

    def draw(self, plt: Any, report: Any) -> None:
        from engine.bench.aggregate import QUALITY_METRICS
        from engine.bench.plot_data import baseline_point, curve_styles, sweep_curves

        self.curves = sweep_curves(report)
        self.curve_styles = curve_styles(report, self.curves)
        if not self.curves:
            plt.title(self.title + " — no sweep in these runs (bench --sweep METHOD.KEY=V1,V2,…)")
            return
        has = lambda m: any(p.y[m].value is not None for c in self.curves for p in c.points)  # noqa: E731
        self.metric = "kl_mean" if has("kl_mean") else "top1_agree"
        m = self.metric
        for c, style in zip(self.curves, self.curve_styles):
            rgb = style.rgb  # the curve's own colour and marker (never a row's)
            pts = []
            for p in c.points:
                if p.x.value is None or p.y[m].value is None:
                    self.na_labels.append(f"{c.method} {c.param}={p.value}: {p.x.na or p.y[m].na}")
                    continue
                pts.append(p)
                if p.x.lo is not None and p.x.hi is not None and p.x.hi > p.x.lo:
                    _segment(self, [p.x.lo, p.x.hi], [p.y[m].value, p.y[m].value], rgb)
                y = p.y[m]
                if y.lo is not None and y.hi is not None and y.hi > y.lo:
                    _segment(self, [p.x.value, p.x.value], [y.lo, y.hi], rgb)
            pts.sort(key=lambda p: p.x.value)
            if pts:
                xs, ys = [p.x.value for p in pts], [p.y[m].value for p in pts]
                plt.plot(xs, ys, marker="braille", color=rgb)
                plt.scatter(xs, ys, marker=style.glyph, color=rgb, label=f"{c.method} ({c.param})")
                for p in pts:
                    plt.text(str(p.value), p.x.value, p.y[m].value, color=rgb)
        base = baseline_point(report, self.curves[0].measure)
        if base is not None and base.x.value is not None and base.y[m].value is not None:
            plt.scatter([base.x.value], [base.y[m].value], marker="dot", label="baseline")
        measures = sorted({c.measure for c in self.curves})
        plt.xlabel("compression achieved: " + " / ".join(measures))
        plt.ylabel(QUALITY_METRICS[m][0])
        if self.na_labels:
            plt.title(self.title + " · n/a: " + "; ".join(self.na_labels))
