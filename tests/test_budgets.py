"""The memory budgets of ``tokenize`` hold: the plan (engine/budget.py) stays above what the
process really uses (its peak RSS, bench/limits.py --measure), and a run whose plan exceeds the
usable memory is refused before any work."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from engine.budget import count_table_bytes, neighbours_bound, samples_bound
from engine.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def test_neighbour_plan_counts_the_table_of_exact_counts():
    small, big = neighbours_bound(1000, 2), neighbours_bound(33_000, 2)
    assert small.fixed == count_table_bytes(1000, 2) and big.fixed > 200 << 20
    assert neighbours_bound(33_000, 16).fixed > 5 * big.fixed  # K + 1 columns
    # the audit's case: --limit 3000 on ~33 KB of text under a 12 GiB cap (6 GiB usable)
    with pytest.raises(InputError, match="--limit 3,000 needs about"):
        neighbours_bound(33_000, 2).check(3000, usable=6 << 30)
    assert samples_bound(1000).per_unit > 100 * 1000  # ≥ 100 B per id (measured ~99 at 1 KB)


def test_tokenize_refuses_a_plan_over_the_memory_before_work(capsys, monkeypatch):
    from app.cli import main

    monkeypatch.setenv("TOKENFORGE_MEMORY_BYTES", str(256 << 20))
    text = "naïve café " * 3000
    assert main(["tokenize", text, "--neighbours", "4", "--limit", "100"]) == 2
    err = capsys.readouterr().err
    assert "--limit 100 needs about" in err and "exact counts" in err


@pytest.mark.slow  # real processes, each loading the tokenizer
def test_plans_stay_above_the_measured_peak_rss():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from limits import measure
    finally:
        sys.path.pop(0)
    rows = measure(1000, 200)
    assert {r["budget"] for r in rows} == {"tokenize --sample", "tokenize --neighbours 2 --limit"}
    for r in rows:
        assert r["measured_bytes"] > 0, r
        assert r["planned_bytes"] >= r["measured_bytes"], r
