"""The seed's workload (suite seed-v1): definition, explanation, how-it-works and two 150-word
summarizations; summaries are scored with ROUGE-L (rouge-score) beside the reference NLL, and
word removal is measured on the summarization inputs."""
from __future__ import annotations

import pytest

from engine.bench.harness import BenchConfig, run_bench
from engine.bench.measure import rouge_l
from engine.bench.records import read_records
from engine.bench.report import aggregate, to_markdown
from engine.bench.suite import load_suite


def test_suite_has_the_five_query_types():
    s = load_suite("seed-v1")
    tasks = [q.meta.get("task") for q in s.queries]
    assert tasks == ["definition", "explanation", "how-it-works", "summary", "summary"]
    for q in s.queries:
        assert q.reference
        if q.meta["task"] == "summary":
            assert 140 <= len(q.reference.split()) <= 170 and q.document
    assert s.prose


def test_rouge_l():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    assert rouge_l("dogs bark", "the cat sat on the mat") == 0.0
    assert 0 < rouge_l("a cat sat", "the cat sat on the mat") < 1
    assert rouge_l("anything", None) is None


def test_summaries_carry_rouge_and_pruning_shrinks_their_input(tiny_lm, tmp_path):
    out = tmp_path / "runs.jsonl"
    cfg = BenchConfig(methods=["baseline", "prune-nth"], suite="seed-v1", repeats=1,
                      max_new_tokens=4, query_ids=["summary-1", "definition-1"], warmup=False)
    run_bench(tiny_lm, cfg, out)
    recs, problems = read_records(out)
    assert problems == []
    summ = [r for r in recs if r["prompt_id"] == "summary-1"]
    assert summ and all(isinstance(r["quality"]["rouge_l"], float) for r in summ)
    assert all("rouge_l" not in r["quality"] for r in recs if r["prompt_id"] == "definition-1")
    assert all(r["quality"]["input"] for r in summ)  # what went in is stored
    rep = aggregate(recs)
    pq = rep.row("prune-nth").per_query["summary-1"]
    assert pq["ratio"]["prompt_tokens_effective"] < 0.95  # word removal on the summarization input
    assert "ROUGE-L" in to_markdown(rep)
