"""The statistics of a bench report: medians with interquartile range, and paired ratios against
the baseline with a percentile-bootstrap 95 % interval and the verdict word it supports (one only
when the interval excludes 1.0)."""
from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Optional


@dataclass
class Stat:
    """Median and interquartile range of ``n`` values (all None when there are none)."""

    median: Optional[float] = None
    q1: Optional[float] = None
    q3: Optional[float] = None
    n: int = 0


@dataclass
class Ratio:
    """A paired ratio against the baseline: median, bootstrap 95 % interval, verdict word."""

    value: Optional[float] = None  # median paired ratio method / baseline
    lo: Optional[float] = None
    hi: Optional[float] = None
    n: int = 0
    verdict: str = ""



def quartiles(vals: list[Optional[float]]) -> Stat:
    """Median and quartiles of the values that are present (None and NaN left out)."""
    vals = sorted(v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v)))
    if not vals:
        return Stat()
    if len(vals) == 1:
        return Stat(vals[0], vals[0], vals[0], 1)
    q = statistics.quantiles(vals, n=4, method="inclusive")
    return Stat(statistics.median(vals), q[0], q[2], len(vals))


def bootstrap_ratio(pairs: list[tuple[float, float]], *, iters: int = 2000, seed: int = 0,
                    lower_is_better: bool = True, words: tuple[str, str] = ("faster", "slower")) -> Ratio:
    """Median of paired ratios a/b with a percentile-bootstrap 95 % CI over the pairs."""
    ratios = [a / b for a, b in pairs if a is not None and b not in (None, 0)]
    if not ratios:
        return Ratio()
    med = statistics.median(ratios)
    rng = random.Random(seed)
    n = len(ratios)
    boots = sorted(statistics.median(rng.choices(ratios, k=n)) for _ in range(iters))
    lo = boots[int(0.025 * (iters - 1))]
    hi = boots[int(math.ceil(0.975 * (iters - 1)))]
    better, worse = words
    if n < 2:
        verdict = "too few pairs"
    elif hi < 1.0:
        verdict = better if lower_is_better else worse
    elif lo > 1.0:
        verdict = worse if lower_is_better else better
    else:
        verdict = "no clear difference"
    return Ratio(med, lo, hi, n, verdict)
