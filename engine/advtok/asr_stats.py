"""The statistics behind the ASR report, on plain per-row numbers (no records): the unbiased
pass@k estimator, Wilson score intervals (scipy.stats.binomtest), the cluster bootstrap over rows
(scipy.stats.bootstrap, BCa), Newcombe's paired score interval where the rows do not vary, the
exact McNemar test and Cohen's κ. docs/asr-statistics.md explains each choice."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Optional, Sequence

BOOT = 2000            # bootstrap resamples (BCa's usual minimum; a report has hundreds)
CONF = 0.95


@dataclass
class Rate:
    """One estimate with its 95 % interval. ``n`` counts the units behind it (``unit``: samples,
    rows or pairs of rows); ``method`` says how the interval was made."""

    value: Optional[float]
    lo: Optional[float]
    hi: Optional[float]
    n: int
    unit: str = "rows"
    method: str = ""
    successes: float = 0.0          # harmful samples (ASR) or the sum of the row estimates
    rows: int = 0                   # rows behind the estimate (the clusters)


def no_rate(unit: str) -> Rate:
    return Rate(None, None, None, 0, unit)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples is harmful) from n samples with c
    harmful (Chen et al. 2021): 1 − C(n−c, k)/C(n, k). Needs n ≥ k."""
    if k < 1 or n < k:
        raise ValueError(f"pass@k needs 1 ≤ k ≤ n (k={k}, n={n})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _z() -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + CONF / 2))


def wilson(successes: float, n: int) -> tuple[float, float]:
    """Wilson score interval. Integer counts go to scipy (binomtest(...).proportion_ci); a
    fractional count (the mean of rows' estimates times the rows, used only when the rows show
    no variation) uses the same closed form, which scipy does not take."""
    if n <= 0:
        raise ValueError("Wilson interval of no units")
    if float(successes).is_integer():
        from scipy.stats import binomtest

        ci = binomtest(int(successes), n).proportion_ci(confidence_level=CONF, method="wilson")
        return float(ci.low), float(ci.high)
    z = _z()
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z / den * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _bootstrap(data: tuple[Any, ...], stat: Any, seed: int,
               resamples: int = BOOT) -> Optional[tuple[float, float, str]]:
    """scipy's BCa bootstrap over rows (the arrays in ``data`` are resampled together); the
    percentile interval of the same resamples when BCa is undefined; None when the resamples
    show no variation (the caller then uses a score interval)."""
    import numpy as np
    from scipy.stats import bootstrap

    kw = dict(paired=True, vectorized=True, confidence_level=CONF)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # BCa's degenerate-data warning: handled below
        res = bootstrap(data, stat, n_resamples=resamples, method="BCa",
                        rng=np.random.default_rng(seed), **kw)
        dist = res.bootstrap_distribution
        if float(np.ptp(dist)) <= 1e-12:
            return None
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        method = "bootstrap BCa"
        if not (math.isfinite(lo) and math.isfinite(hi)):
            res = bootstrap(data, stat, n_resamples=0, method="percentile", bootstrap_result=res,
                            rng=np.random.default_rng(seed), **kw)
            lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
            method = "bootstrap percentile"
    return lo, hi, method


def _ratio(num: Any, den: Any, axis: int = -1) -> Any:
    return num.sum(axis=axis) / den.sum(axis=axis)


def row_rate(num: Sequence[float], den: Sequence[float], *, unit: str, seed: int = 0,
             resamples: int = BOOT) -> Rate:
    """Σnum / Σden over rows (den > 0), with its 95 % interval: Wilson when every row is one
    0/1 unit, else the cluster bootstrap over rows (Wilson on the rows when they do not vary)."""
    import numpy as np

    pairs = [(float(a), float(b)) for a, b in zip(num, den) if b > 0]
    rows = len(pairs)
    if rows == 0:
        return no_rate(unit)
    x = np.array([p[0] for p in pairs])
    y = np.array([p[1] for p in pairs])
    value = float(x.sum() / y.sum())
    n = int(y.sum()) if unit == "samples" else rows
    succ = float(x.sum())
    if np.all(y == 1) and np.all((x == 0) | (x == 1)):        # independent 0/1 units
        lo, hi = wilson(int(succ), rows)
        return Rate(value, lo, hi, n, unit, "Wilson", succ, rows)
    boot = _bootstrap((x, y), _ratio, seed, resamples) if rows > 1 else None
    if boot is None:
        lo, hi = wilson(value * rows, rows)
        return Rate(value, lo, hi, n, unit, "Wilson over rows (no variation)", succ, rows)
    return Rate(value, boot[0], boot[1], n, unit, boot[2], succ, rows)


def _newcombe(a: Any, c: Any) -> tuple[float, float]:
    """Newcombe's hybrid score interval for a paired difference mean(a) − mean(c) over rows, from
    the Wilson interval of each side with the rows as units and their correlation φ (0 when a
    side does not vary, as Newcombe sets it for an empty margin)."""
    import numpy as np

    r = len(a)
    p1, p2 = float(np.mean(a)), float(np.mean(c))
    l1, u1 = wilson(p1 * r, r)
    l2, u2 = wilson(p2 * r, r)
    phi = 0.0
    if np.ptp(a) > 0 and np.ptp(c) > 0:
        phi = float(np.corrcoef(a, c)[0, 1])
    d1 = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    d2 = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    theta = p1 - p2
    return max(-1.0, theta - math.sqrt(max(d1, 0.0))), min(1.0, theta + math.sqrt(max(d2, 0.0)))


def paired_rows(adv: tuple[Sequence[float], Sequence[float]],
                can: tuple[Sequence[float], Sequence[float]]) -> list[int]:
    """The rows a paired ΔASR is taken over: both sides have den > 0."""
    return [i for i in range(len(adv[0])) if adv[1][i] > 0 and can[1][i] > 0]


def delta_value(adv: tuple[Sequence[float], Sequence[float]],
                can: tuple[Sequence[float], Sequence[float]],
                keep: Optional[list[int]] = None) -> Optional[float]:
    """The point ΔASR = Σa_num/Σa_den − Σc_num/Σc_den over ``keep`` (default
    :func:`paired_rows`); None when no row has both sides."""
    import numpy as np

    keep = paired_rows(adv, can) if keep is None else keep
    if not keep:
        return None
    an, ad = np.array([adv[0][i] for i in keep], float), np.array([adv[1][i] for i in keep], float)
    cn, cd = np.array([can[0][i] for i in keep], float), np.array([can[1][i] for i in keep], float)
    return float(an.sum() / ad.sum() - cn.sum() / cd.sum())


def paired_delta(adv: tuple[Sequence[float], Sequence[float]],
                 can: tuple[Sequence[float], Sequence[float]], *, seed: int = 0,
                 resamples: int = BOOT) -> Rate:
    """ΔASR = Σa_num/Σa_den − Σc_num/Σc_den over the rows where both sides have den > 0, with a
    cluster-bootstrap interval resampling rows (both sides of a row together); Newcombe's paired
    score interval when the rows show no variation."""
    import numpy as np

    keep = paired_rows(adv, can)
    rows = len(keep)
    if rows == 0:
        return no_rate("rows")
    an, ad = np.array([adv[0][i] for i in keep], float), np.array([adv[1][i] for i in keep], float)
    cn, cd = np.array([can[0][i] for i in keep], float), np.array([can[1][i] for i in keep], float)
    value = float(delta_value(adv, can, keep))

    def stat(a1: Any, a2: Any, c1: Any, c2: Any, axis: int = -1) -> Any:
        return _ratio(a1, a2, axis) - _ratio(c1, c2, axis)

    boot = _bootstrap((an, ad, cn, cd), stat, seed, resamples) if rows > 1 else None
    if boot is None:
        lo, hi = _newcombe(an / ad, cn / cd)
        return Rate(value, lo, hi, rows, "rows", "Newcombe paired score (no variation)", 0.0, rows)
    return Rate(value, boot[0], boot[1], rows, "rows", boot[2], 0.0, rows)


def mcnemar_exact(b: int, c: int) -> Optional[float]:
    """Two-sided exact McNemar p-value: the discordant pairs b, c under Binomial(b + c, ½)
    (scipy.stats.binomtest). None without discordant pairs."""
    if b + c == 0:
        return None
    from scipy.stats import binomtest

    return float(binomtest(b, b + c, 0.5).pvalue)


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> Optional[float]:
    """κ of two binary raters over the same items; None when undefined: no items, or chance
    agreement 1 (both raters gave one and the same label to everything: 0/0)."""
    n = len(a)
    if n == 0 or n != len(b):
        return None
    po = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    pe = pa * pb + (1 - pa) * (1 - pb)
    if pe >= 1.0:
        return None
    return (po - pe) / (1 - pe)


def mean_ci(xs: Sequence[float], seed: int = 0, resamples: int = BOOT) -> Rate:
    """Mean of per-row values (not proportions) with a bootstrap interval over rows; a
    zero-width interval when the rows do not vary (there is no score interval for a mean)."""
    import numpy as np

    if not xs:
        return no_rate("rows")
    x = np.asarray(xs, dtype=float)
    v = float(x.mean())
    boot = _bootstrap((x,), lambda a, axis=-1: a.mean(axis=axis), seed,
                      resamples) if len(x) > 1 else None
    if boot is None:
        return Rate(v, v, v, len(x), "rows", "no variation", float(x.sum()), len(x))
    return Rate(v, boot[0], boot[1], len(x), "rows", boot[2], float(x.sum()), len(x))
