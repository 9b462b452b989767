"""ASR statistics against brute force: exact McNemar against enumerating every sign pattern,
Cohen's κ against its contingency-table definition, ASR@k and unparsed handling on hand-made
records, and bootstrap intervals that contain the estimate and shrink with more rows."""
from __future__ import annotations

import itertools
import math

import pytest

from engine.advtok.asr_report import bootstrap, build_report, cohen_kappa, mcnemar_exact


def test_mcnemar_matches_enumeration():
    for b, c in [(0, 3), (1, 4), (5, 5), (7, 1), (10, 2)]:
        n = b + c
        obs = abs(b - c)
        # two-sided: all 2^n assignments of discordant pairs at least as extreme
        extreme = sum(1 for bits in itertools.product((0, 1), repeat=n)
                      if abs(2 * sum(bits) - n) >= obs)
        assert mcnemar_exact(b, c) == pytest.approx(min(1.0, extreme / 2 ** n))
    assert mcnemar_exact(0, 0) is None


def test_kappa_matches_table_definition():
    a = [True, True, False, False, True, False, True, True]
    b = [True, False, False, False, True, True, True, True]
    n = len(a)
    tab = {(x, y): sum(1 for p, q in zip(a, b) if (p, q) == (x, y)) for x in (0, 1) for y in (0, 1)}
    po = (tab[1, 1] + tab[0, 0]) / n
    pe = ((tab[1, 1] + tab[1, 0]) * (tab[1, 1] + tab[0, 1]) + (tab[0, 0] + tab[0, 1]) * (tab[0, 0] + tab[1, 0])) / n ** 2
    assert cohen_kappa(a, b) == pytest.approx((po - pe) / (1 - pe))
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa([], []) is None


def test_bootstrap_interval():
    small = bootstrap([(float(i % 3 == 0), 1.0) for i in range(30)], seed=1)
    big = bootstrap([(float(i % 3 == 0), 1.0) for i in range(300)], seed=1)
    for r in (small, big):
        assert r.lo <= r.value <= r.hi
    assert small.value == pytest.approx(10 / 30) and big.value == pytest.approx(100 / 300)
    assert (big.hi - big.lo) < (small.hi - small.lo)
    assert bootstrap([(1.0, 1.0)] * 5).lo == 1.0          # no variation, no width


def _rec(i, cat, can, adv, gain):
    def side(labels):
        return [{"text": "x", "verdicts": {j: {"judge": j, "label": lab} for j, lab in
                                          zip(("refusal", "target"), pair)}} for pair in labels]
    return {"id": f"r{i}", "line": i, "category": cat, "judges": ["refusal", "target"],
            "canonical_samples": side(can), "adversarial_samples": side(adv), "improvement": gain,
            "model": {"name": "m", "weights_hash": "abc"}}


H, S, U = "harmful", "safe", "unparsed"


def test_report_rates_by_hand():
    recs = [
        _rec(1, "a", [(S, S), (S, S)], [(H, H), (S, S)], 1.0),
        _rec(2, "a", [(S, S), (S, S)], [(S, S), (H, S)], 2.0),
        _rec(3, "b", [(H, S), (S, S)], [(S, S), (S, S)], -1.0),
        _rec(4, "b", [(S, S), (U, S)], [(U, S), (H, S)], 0.0),
    ]
    rep = build_report(recs, seed=0)
    assert rep.ks == [1, 2] and rep.judges == ["refusal", "target"]
    ref = next(r for r in rep.table if r.judge == "refusal" and not r.category)
    assert ref.unparsed == {"canonical": 1, "adversarial": 1}
    # sample level: canonical 1 harmful of 7 read; adversarial 3 of 7
    assert ref.asr["canonical"].value == pytest.approx(1 / 7)
    assert ref.asr["adversarial"].value == pytest.approx(3 / 7)
    # @1: canonical rows 1..4 -> F, F, T, F; adversarial -> T, F, F, unknown (excluded)
    assert ref.asr_at_k["canonical"][1].value == pytest.approx(1 / 4)
    assert ref.asr_at_k["adversarial"][1].value == pytest.approx(1 / 3)
    # @2: canonical F, F, T, unknown (unparsed, none harmful); adversarial T, T, F, T
    assert ref.asr_at_k["canonical"][2].value == pytest.approx(1 / 3)
    assert ref.asr_at_k["adversarial"][2].value == pytest.approx(3 / 4)
    assert (ref.mcnemar_b, ref.mcnemar_c) == (2, 1)       # row 4 has no canonical outcome
    assert ref.mcnemar_p == pytest.approx(1.0)
    cat_b = next(r for r in rep.table if r.judge == "refusal" and r.category == "b")
    assert cat_b.rows == 2
    assert rep.gain.value == pytest.approx(0.5) and rep.gain.n == 4
    assert "refusal|target" in rep.kappa and not math.isnan(rep.kappa["refusal|target"])
