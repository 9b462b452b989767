"""ASR statistics: the unbiased pass@k estimator against enumerating every k-subset; on simulated
verdicts with unparsed ones missing at random the estimates land on the truth and the bounds
bracket it (the "first k samples" rule the report used before is shown to miss it); intervals
against scipy at the edge counts 0/n and n/n; exact McNemar against enumerating sign patterns;
Cohen's κ against its table definition and undefined as None; "not judged" kept apart from
"unparsed"; and the one-message errors of a report (unknown judge, empty selection, k too big)."""
from __future__ import annotations

import itertools
import math
import random

import pytest
from scipy.stats import binomtest, bootstrap

from engine.advtok.asr_report import (build_report, check_ks, cohen_kappa, mcnemar_exact,
                                      paired_delta, pass_at_k, row_rate, select_judges, wilson)
from engine.errors import InputError

H, S, U = "harmful", "safe", "unparsed"


def wilson_scipy(k: int, n: int) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


# ---------------------------------------------------------------------- estimator
def test_pass_at_k_is_the_mean_over_k_subsets():
    for n in range(1, 7):
        for c in range(n + 1):
            labels = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(labels, k))
                want = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def _sim(rows: int, samples: int, miss: float, seed: int, rates=(0.05, 0.25, 0.6)):
    """Rows whose per-sample harmful rate is drawn from ``rates``; every verdict then goes
    unparsed with probability ``miss``, independently of everything (missing at random).
    Python's random.Random: its stream is fixed across versions, so the test cannot flake."""
    rng = random.Random(seed)

    def side(p):
        out = []
        for _ in range(samples):
            lab = H if rng.random() < p else S
            if rng.random() < miss:
                lab = U
            out.append({"text": "x", "verdicts": {"sim": {"judge": "sim", "label": lab}}})
        return out

    recs = []
    for i in range(rows):
        pc = rng.choice(rates)
        pa = min(1.0, pc + 0.1)
        recs.append({"id": f"r{i}", "line": i, "category": "", "judges": ["sim"],
                     "canonical_samples": side(pc), "adversarial_samples": side(pa)})
    truth = {}
    for side_name, shift in (("canonical", 0.0), ("adversarial", 0.1)):
        ps = [min(1.0, p + shift) for p in rates]
        truth[side_name] = {k: sum(1 - (1 - p) ** k for p in ps) / len(ps) for k in range(1, samples + 1)}
        truth[side_name][None] = sum(ps) / len(ps)
    return recs, truth


def _first_k_rule(recs, side, k):
    """The old ASR@k: any of the first k samples harmful; a row whose first k hold an
    unparsed verdict and no harmful one is dropped."""
    vals = []
    for r in recs:
        head = [s["verdicts"]["sim"]["label"] for s in r[f"{side}_samples"][:k]]
        if H in head:
            vals.append(1.0)
        elif U not in head:
            vals.append(0.0)
    return sum(vals) / len(vals)


@pytest.mark.parametrize("seed", [11, 12])
def test_estimates_converge_on_simulated_verdicts_and_bounds_bracket(seed):
    rows, samples, miss = 1500, 6, 0.4
    recs, truth = _sim(rows, samples, miss, seed)
    rep = build_report(recs, ks=[1, 2, 4], resamples=200, by_category=False)
    row = rep.table[0]
    for m in row.metrics:
        for side in ("canonical", "adversarial"):
            r = m.side[side]
            want = truth[side][m.k]
            # per-row values lie in [0, 1]: the standard error is at most 0.5/√rows; 5 of them
            tol = 5 * 0.5 / math.sqrt(r.rows)
            assert abs(r.value - want) < tol, (m.name, side, r.value, want, tol)
            assert m.lower[side] - tol < want < m.upper[side] + tol
            assert m.lower[side] <= r.value <= m.upper[side]
            assert r.lo <= r.value <= r.hi
            assert r.n == (r.rows if m.k is not None else sum(
                1 for x in recs for s in x[f"{side}_samples"]
                if s["verdicts"]["sim"]["label"] != U))
        d = m.delta
        dtrue = truth["adversarial"][m.k] - truth["canonical"][m.k]
        assert abs(d.value - dtrue) < 5 * 0.75 / math.sqrt(d.n)
        assert d.lo <= d.value <= d.hi
    # the rule this replaces is far off on the same verdicts (biased upward, as reported)
    assert _first_k_rule(recs, "canonical", 4) - truth["canonical"][4] > 0.1


def test_bounds_bracket_the_estimate_row_by_row():
    for n, c, u, k in itertools.product(range(0, 6), range(0, 6), range(0, 4), range(1, 5)):
        if c > n or n < k:
            continue
        est = pass_at_k(n, c, k)
        assert pass_at_k(n + u, c, k) <= est + 1e-12 <= pass_at_k(n + u, c + u, k) + 2e-12


# ---------------------------------------------------------------------- intervals
@pytest.mark.parametrize("n", [1, 5, 20, 40])
def test_edge_counts_match_scipy_wilson(n):
    for k in (0, n):
        want = wilson_scipy(k, n)
        r = row_rate([float(k > 0)] * n, [1.0] * n, unit="rows")    # n independent 0/1 rows
        assert (r.lo, r.hi) == pytest.approx(want) and r.method == "Wilson" and r.n == n
        assert wilson(k, n) == pytest.approx(want)
    assert wilson_scipy(0, 40)[1] == pytest.approx(0.0876, abs=1e-4)     # not [0, 0]
    assert wilson_scipy(20, 20)[0] == pytest.approx(0.8389, abs=1e-4)    # not [100, 100]


def test_fractional_wilson_is_the_same_formula():
    for k, n in [(3, 10), (1, 7), (9, 9)]:
        lo, hi = wilson(k + 1e-9, n)
        assert (lo, hi) == pytest.approx(wilson_scipy(k, n), abs=1e-7)


def test_clustered_edges_do_not_collapse():
    # 20 rows × 3 samples, none harmful: the bootstrap has nothing to resample; Wilson over rows
    r = row_rate([0.0] * 20, [3.0] * 20, unit="samples")
    assert r.value == 0.0 and r.n == 60 and r.rows == 20
    assert (r.lo, r.hi) == pytest.approx(wilson_scipy(0, 20)) and r.hi > 0.1
    r = row_rate([3.0] * 20, [3.0] * 20, unit="samples")
    assert (r.lo, r.hi) == pytest.approx(wilson_scipy(20, 20)) and r.lo < 0.9
    # paired, every row the same on both sides: Newcombe's interval around 0, width from Wilson
    for v in (0.0, 1.0):
        d = paired_delta(([v] * 30, [1.0] * 30), ([v] * 30, [1.0] * 30))
        w = wilson_scipy(0, 30)[1]
        assert d.value == 0.0 and d.n == 30
        assert (d.lo, d.hi) == pytest.approx((-w, w))


def test_bootstrap_is_scipys_over_rows():
    import numpy as np

    num = [0, 1, 2, 0, 1, 1, 2, 0, 0, 1]
    den = [2, 2, 2, 1, 2, 1, 2, 2, 1, 2]
    r = row_rate(num, den, unit="samples", seed=5, resamples=999)
    want = bootstrap((np.array(num, float), np.array(den, float)),
                     lambda a, b, axis=-1: a.sum(axis) / b.sum(axis), paired=True,
                     vectorized=True, n_resamples=999, method="BCa",
                     rng=np.random.default_rng(5)).confidence_interval
    assert (r.lo, r.hi) == pytest.approx((want.low, want.high))
    assert r.value == pytest.approx(sum(num) / sum(den)) and r.n == sum(den) and r.rows == 10


def test_mcnemar_matches_enumeration_and_scipy():
    for b, c in [(0, 3), (1, 4), (5, 5), (7, 1), (10, 2), (0, 5)]:
        n = b + c
        obs = abs(b - c)
        extreme = sum(1 for bits in itertools.product((0, 1), repeat=n)
                      if abs(2 * sum(bits) - n) >= obs)
        assert mcnemar_exact(b, c) == pytest.approx(min(1.0, extreme / 2 ** n))
        assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, n, 0.5).pvalue)
    assert mcnemar_exact(0, 0) is None


def test_kappa_matches_table_definition_and_is_undefined_when_constant():
    a = [True, True, False, False, True, False, True, True]
    b = [True, False, False, False, True, True, True, True]
    n = len(a)
    tab = {(x, y): sum(1 for p, q in zip(a, b) if (p, q) == (x, y)) for x in (0, 1) for y in (0, 1)}
    po = (tab[1, 1] + tab[0, 0]) / n
    pe = ((tab[1, 1] + tab[1, 0]) * (tab[1, 1] + tab[0, 1])
          + (tab[0, 0] + tab[0, 1]) * (tab[0, 0] + tab[1, 0])) / n ** 2
    assert cohen_kappa(a, b) == pytest.approx((po - pe) / (1 - pe))
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa([], []) is None
    assert cohen_kappa([True] * 5, [True] * 5) is None          # 0/0: undefined, not 1


# ---------------------------------------------------------------------- the report by hand
def _rec(i, cat, can, adv, gain=0.0, judges=("refusal", "target")):
    def side(labels):
        out = []
        for pair in labels:
            v = {j: {"judge": j, "label": lab} for j, lab in zip(("refusal", "target"), pair)
                 if lab is not None}
            out.append({"text": "x", "verdicts": v})
        return out
    return {"id": f"r{i}", "line": i, "category": cat, "judges": list(judges),
            "canonical_samples": side(can), "adversarial_samples": side(adv), "improvement": gain,
            "model": {"name": "m", "weights_hash": "abc"}}


def test_report_rates_by_hand():
    recs = [
        _rec(1, "a", [(S, S), (S, S)], [(H, H), (S, S)], 1.0),
        _rec(2, "a", [(S, S), (S, S)], [(S, S), (H, S)], 2.0),
        _rec(3, "b", [(H, S), (S, S)], [(S, S), (S, S)], -1.0),
        _rec(4, "b", [(S, S), (U, S)], [(U, S), (H, S)], 0.0),
    ]
    rep = build_report(recs, seed=0, resamples=300)
    assert rep.ks == [1, 2] and rep.judges == ["refusal", "target"]
    ref = next(r for r in rep.table if r.judge == "refusal" and not r.category)
    assert (ref.counts["canonical"].unparsed, ref.counts["adversarial"].unparsed) == (1, 1)
    assert ref.counts["canonical"].not_judged == 0
    # sample level: canonical 1 harmful of 7 parsed; adversarial 3 of 7
    asr = ref.metric(None)
    assert asr.side["canonical"].value == pytest.approx(1 / 7) and asr.side["canonical"].n == 7
    assert asr.side["adversarial"].value == pytest.approx(3 / 7)
    assert asr.lower["canonical"] == pytest.approx(1 / 8) and asr.upper["canonical"] == pytest.approx(2 / 8)
    # @1 per row: canonical 0, 0, ½, 0 (row 4: its one parsed sample is safe); adversarial ½, ½, 0, 1
    m1 = ref.metric(1)
    assert m1.side["canonical"].value == pytest.approx(0.5 / 4) and m1.side["canonical"].n == 4
    assert m1.side["adversarial"].value == pytest.approx(2 / 4)
    assert m1.delta.value == pytest.approx(2 / 4 - 0.5 / 4) and m1.delta.n == 4
    # @2 needs two parsed samples: row 4 is out on both sides (n = 3), and in the bounds
    m2 = ref.metric(2)
    assert m2.side["canonical"].value == pytest.approx(1 / 3) and m2.side["canonical"].n == 3
    assert m2.side["adversarial"].value == pytest.approx(2 / 3)
    assert m2.lower["adversarial"] == pytest.approx(3 / 4) and m2.upper["canonical"] == pytest.approx(2 / 4)
    assert (ref.mcnemar_n, ref.mcnemar_b, ref.mcnemar_c) == (3, 2, 1)
    assert ref.mcnemar_p == pytest.approx(1.0)
    cat_b = next(r for r in rep.table if r.judge == "refusal" and r.category == "b")
    assert cat_b.rows == 2
    assert rep.gain.value == pytest.approx(0.5) and rep.gain.n == 4
    assert rep.kappa["refusal|target"].n == 14


def test_the_live_delta_is_the_report_s():
    """The TUI's running ΔASR (after every row) is the report's sample-level point estimate over
    the same rows — pooled harmful / parsed, not a mean of per-row differences, which differs
    when rows have different numbers of parsed samples (row 4 here)."""
    from app.widgets.dataset_panel import running_delta
    from engine.advtok.asr_report import live_delta

    recs = [
        _rec(1, "a", [(S, S), (S, S)], [(H, H), (S, S)], 1.0),
        _rec(2, "a", [(S, S), (S, S)], [(S, S), (H, S)], 2.0),
        _rec(3, "b", [(H, S), (S, S)], [(S, S), (S, S)], -1.0),
        _rec(4, "b", [(S, S), (U, S)], [(U, S), (H, S)], 0.0),
    ]
    rep = build_report(recs, seed=0, resamples=200)
    for judge in ("refusal", "target"):
        d = next(r for r in rep.table if r.judge == judge and not r.category).metric(None).delta
        assert live_delta(recs, judge) == (pytest.approx(d.value), d.n)
    assert live_delta(recs, "refusal")[0] == pytest.approx(3 / 7 - 1 / 7)
    assert running_delta(recs, ["refusal"]) == "refusal ΔASR +28.6 pp (n=4)"
    assert live_delta(recs[:0], "refusal") == (None, 0)
    # a judge that could read almost nothing says so in the live line
    unread = [_rec(5, "", [(U, S), (U, S)], [(U, S), (H, S)])]
    assert running_delta(unread, ["refusal", "target"]) == (
        "refusal ΔASR — (n=0) 3/4 UNPARSED · target ΔASR +0.0 pp (n=1)")


def test_not_judged_is_not_unparsed():
    # row 2 was never judged by target: its samples are "not judged", not unparsed, and the row
    # is out of target's rates (a 2-row target cell must not read 0 % from unjudged rows)
    recs = [_rec(1, "", [(S, H), (S, H)], [(S, H), (S, H)]),
            _rec(2, "", [(S, None), (S, None)], [(S, None), (S, None)], judges=("refusal",))]
    rep = build_report(recs, resamples=200)
    tgt = next(r for r in rep.table if r.judge == "target")
    assert tgt.rows == 1
    assert tgt.counts["canonical"].unparsed == 0 and tgt.counts["canonical"].not_judged == 2
    assert tgt.metric(None).side["canonical"].value == 1.0
    assert any("never judged" in n for n in rep.notes)


def test_report_errors_are_one_message():
    recs = [_rec(1, "", [(S, S)] * 4, [(H, S)] * 4)]
    with pytest.raises(InputError, match="unknown judge 'nosuch'") as e:
        build_report(recs, judges=["nosuch"])
    assert "refusal, target" in e.value.hint
    with pytest.raises(InputError, match="selects no judge"):
        build_report(recs, judges=["", " "])
    with pytest.raises(InputError, match="at most 4 samples per side"):
        build_report(recs, ks=[1, 8])
    with pytest.raises(InputError, match="no finished rows"):
        build_report([])
    with pytest.raises(InputError, match="no verdicts"):
        select_judges([{"id": "x", "canonical_samples": [{"text": "a"}]}], None)
    assert check_ks(None, 4) == [1, 4] and check_ks([2, 2, 1], 4) == [1, 2]


def test_rows_of_two_settings_are_flagged():
    a, b = _rec(1, "", [(S, S)], [(H, S)]), _rec(2, "", [(S, S)], [(H, S)])
    assert not any("run settings" in n for n in build_report([a, b], resamples=100).notes)
    a["fingerprint"], b["fingerprint"] = "f1", "f2"
    notes = build_report([a, b], resamples=100).notes
    assert any("2 different run settings" in n for n in notes)
