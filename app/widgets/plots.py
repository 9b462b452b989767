"""Terminal plots of a bench report (textual-plotext): cost-vs-quality scatter, grouped bars of
medians relative to the baseline, and decode tok/s vs context length.

The data comes from ``engine.bench.report`` (torch-free), the same functions the PNG export uses,
so the terminal and the files never disagree. Plots are rebuilt only when a new report is shown
(docs/tui.md: plotext renders on the UI thread; curves are downsampled to about 2x the width).
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

    def show(self, report: Any) -> None:
        self.report = report
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


class CostQualityPlot(BenchPlot):
    """x: median KV bytes stored (MiB); y: median teacher-forced KL to the baseline."""

    title = "Cost vs quality: KV MiB stored vs KL nats/token (lower-left is better)"

    def draw(self, plt: Any, report: Any) -> None:
        from engine.bench.report import scatter_points

        for key, x, y in scatter_points(report):
            plt.scatter([x / 2 ** 20], [y], label=key, marker="dot")
        plt.xlabel("KV stored (MiB)")
        plt.ylabel("KL (nats/token)")


class MedianBarsPlot(BenchPlot):
    """Per cost metric, each method's median as a multiple of the baseline's (1 = baseline)."""

    title = "Medians ÷ baseline median (decode tok/s: higher is faster)"

    def draw(self, plt: Any, report: Any) -> None:
        from engine.bench.report import bar_groups

        names, series = bar_groups(report)
        if not series:
            return
        keys = list(series)
        plt.multiple_bar(names, [series[k] for k in keys], labels=keys)
        plt.ylabel("× baseline")


class SpeedContextPlot(BenchPlot):
    """Decode tok/s against prompt length per method (shows where eviction keeps speed)."""

    title = "Decode tok/s vs prompt tokens"

    def draw(self, plt: Any, report: Any) -> None:
        for row in report.rows:
            if row.curve and not row.speed_note:
                pts = downsample(row.curve)
                plt.plot([p[0] for p in pts], [p[1] for p in pts], label=row.key, marker="dot")
        plt.xlabel("prompt tokens in")
        plt.ylabel("tok/s")
