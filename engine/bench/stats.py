"""The statistics of a bench report.

- Cost figures per row: median with interquartile range over the runs (what one run costs).
- Cost against the baseline: *paired* ratios. A pair is a method's run and the baseline's run of
  the same query and repeat (interleaved, so close in time). Repeats of one query are not
  independent samples of the method, so they are averaged first: each query contributes the
  geometric mean of its repeats' paired ratios. The row's ratio is the geometric mean over queries,
  with a bootstrap 95 % interval over queries (``scipy.stats.bootstrap``, BCa; percentile when
  BCa is undefined). A verdict word is given only when that interval excludes 1 *and* there are
  at least ``MIN_QUERIES`` queries; otherwise "not enough data". Timings get no verdict either
  when the load average moved during the run (``load_moved``).
- Quality (KL, top-1 agreement, reference NLL, containment): deterministic per query, so the
  spread that matters is between queries: the mean over queries with a bootstrap 95 % interval.
"""
from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

MIN_QUERIES = 5          # a verdict needs at least this many queries
CONFIDENCE = 0.95
RESAMPLES = 2000
NOT_ENOUGH = "not enough data"
NO_CLEAR = "no clear difference"
LOAD_MOVED = "no verdict: load moved"


@dataclass
class Stat:
    """Median and interquartile range of ``n`` values (all None when there are none)."""

    median: Optional[float] = None
    q1: Optional[float] = None
    q3: Optional[float] = None
    n: int = 0


@dataclass
class Interval:
    """A point estimate with its bootstrap 95 % interval over ``n`` queries (lo == hi == value
    when every query gave the same figure; lo/hi None when there is one query)."""

    value: Optional[float] = None
    lo: Optional[float] = None
    hi: Optional[float] = None
    n: int = 0


@dataclass
class Ratio:
    """A paired ratio against the baseline: geometric mean over queries of the per-query ratio
    (its repeats averaged), bootstrap 95 % interval over queries, the verdict it supports."""

    value: Optional[float] = None
    lo: Optional[float] = None
    hi: Optional[float] = None
    n: int = 0          # queries
    pairs: int = 0      # paired runs behind them
    verdict: str = ""


def _clean(vals: Sequence[Optional[float]]) -> list[float]:
    return [float(v) for v in vals
            if v is not None and not (isinstance(v, float) and (math.isnan(v) or math.isinf(v)))]


def quartiles(vals: Sequence[Optional[float]]) -> Stat:
    """Median and quartiles of the values that are present (None and NaN left out)."""
    vs = sorted(_clean(vals))
    if not vs:
        return Stat()
    if len(vs) == 1:
        return Stat(vs[0], vs[0], vs[0], 1)
    q = statistics.quantiles(vs, n=4, method="inclusive")
    return Stat(statistics.median(vs), q[0], q[2], len(vs))


def bootstrap_ci(vals: Sequence[float], stat: Optional[Callable] = None, *, seed: int = 0,
                 resamples: int = RESAMPLES) -> tuple[Optional[float], Optional[float]]:
    """95 % interval of ``stat`` (default: the mean) over ``vals`` by ``scipy.stats.bootstrap``
    (BCa; the percentile interval where BCa is undefined). (None, None) below two values; a
    degenerate sample (all equal) gives its value on both sides."""
    import numpy as np

    vs = _clean(vals)
    if len(vs) < 2:
        return None, None
    if max(vs) == min(vs):
        return vs[0], vs[0]
    from scipy.stats import bootstrap

    fn = stat or np.mean  # called as fn(sample, axis=-1) on a batch of resamples
    data = (np.asarray(vs, dtype=float),)
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():  # BCa on a tiny sample warns before giving NaN
            warnings.simplefilter("ignore")
            res = bootstrap(data, fn, vectorized=True, n_resamples=resamples,
                            confidence_level=CONFIDENCE, method=method, rng=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if not (math.isnan(lo) or math.isnan(hi)):
            return lo, hi
    return None, None


def mean_interval(vals: Sequence[Optional[float]], *, seed: int = 0) -> Interval:
    """Mean over queries with its bootstrap 95 % interval (quality figures)."""
    vs = _clean(vals)
    if not vs:
        return Interval()
    lo, hi = bootstrap_ci(vs, seed=seed)
    return Interval(statistics.fmean(vs), lo, hi, len(vs))


def per_query_log_ratios(pairs: dict[str, list[tuple[Optional[float], Optional[float]]]]) -> list[float]:
    """One log ratio per query: the mean over its repeats of log(method / baseline); pairs with
    a missing or non-positive side are left out, a query with none is dropped."""
    out = []
    for runs in pairs.values():
        logs = [math.log(a / b) for a, b in runs
                if a is not None and b is not None and a > 0 and b > 0]
        if logs:
            out.append(statistics.fmean(logs))
    return out


def paired_ratio(pairs: dict[str, list[tuple[Optional[float], Optional[float]]]], *,
                 lower_is_better: bool = True, words: tuple[str, str] = ("faster", "worse"),
                 verdicts: bool = True, why_not: str = LOAD_MOVED, seed: int = 0,
                 min_queries: int = MIN_QUERIES) -> Ratio:
    """Paired ratio method / baseline from ``{query: [(method value, baseline value), …]}``
    (one pair per repeat): repeats averaged per query (in log space), geometric mean over
    queries, bootstrap 95 % interval over queries. ``verdicts`` False (timings under a moving
    load) gives ``why_not`` instead of a verdict word."""
    logs = per_query_log_ratios(pairs)
    if not logs:
        return Ratio()
    n_pairs = sum(1 for runs in pairs.values() for a, b in runs
                  if a is not None and b is not None and a > 0 and b > 0)
    value = math.exp(statistics.fmean(logs))
    lo, hi = bootstrap_ci(logs, seed=seed)
    lo, hi = (None, None) if lo is None else (math.exp(lo), math.exp(hi))
    better, worse = words
    if len(logs) < min_queries or lo is None:
        verdict = NOT_ENOUGH
    elif not verdicts:
        verdict = why_not
    elif hi < 1.0:
        verdict = better if lower_is_better else worse
    elif lo > 1.0:
        verdict = worse if lower_is_better else better
    else:
        verdict = NO_CLEAR
    return Ratio(value, lo, hi, len(logs), n_pairs, verdict)


def load_moved(loads: Sequence[Sequence[float]], threshold: float) -> Optional[str]:
    """Why timings cannot carry a verdict, or None: the 1-minute load average seen at the start
    and with every record (the caller takes the run's own threads off the latter) spanned more
    than ``threshold``."""
    ones = [float(v[0]) for v in loads if v]
    if len(ones) < 2:
        return None
    span = max(ones) - min(ones)
    if span > threshold:
        return (f"load average moved {min(ones):.2f}–{max(ones):.2f} during the run "
                f"(> {threshold:g}): no timing verdicts")
    return None


__all__ = ["Interval", "MIN_QUERIES", "NOT_ENOUGH", "NO_CLEAR", "Ratio", "Stat", "bootstrap_ci",
           "load_moved", "mean_interval", "paired_ratio", "per_query_log_ratios", "quartiles"]
