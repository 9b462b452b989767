"""The eviction, pruning, sparsity and phrase-merge rows run through the real bench harness
(tiny model): every record is "ok" and schema-valid, figures are in place, and the shared model
is left as it was."""
from __future__ import annotations

import json

import torch

from engine.bench.harness import BenchConfig, run_bench
from engine.bench.methods import make_method, method_names

E2 = ["evict-sinks", "evict-cake", "prune-nth", "prune-selfinfo", "sparsity-magnitude",
      "sparsity-rotated", "phrase-merge"]


def test_registered():
    assert set(E2) <= set(method_names())
    for n in E2:
        m = make_method(n)
        assert m.name == n and m.label


def test_e2_rows_through_the_harness(tiny_lm, tmp_path):
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    fwd = make_method("baseline").forward(tiny_lm)
    before = fwd.logits(ids, fwd.new_cache(), keep=0)
    emb = tiny_lm.model.get_input_embeddings()
    params = {"evict-sinks": {"sinks": 4, "window": 60},
              "evict-cake": {"budget": 64, "window": 8}}
    cfg = BenchConfig(methods=["baseline", *E2], repeats=1, max_new_tokens=4, warmup=False,
                      query_ids=["qa-1", "long-1", "prose-1"], params=params)
    out = tmp_path / "runs.jsonl"
    summary = run_bench(tiny_lm, cfg, out)
    recs = [json.loads(l) for l in out.read_text().splitlines() if l.strip()]
    bad = [(r["method"], r["prompt_id"], r["message"]) for r in recs if r["status"] != "ok"]
    assert not bad and summary.errors == 0
    by = {(r["method"], r["prompt_id"]): r for r in recs}
    long_base = by[("baseline", "long-1")]["cost"]
    for n in ("evict-sinks", "evict-cake"):
        c = by[(n, "long-1")]["cost"]
        assert c["kv_bytes_stored"] < long_base["kv_bytes_stored"] / 3
    assert by[("evict-cake", "long-1")]["cost"]["kv_bytes_stored"] == \
        by[("evict-sinks", "long-1")]["cost"]["kv_bytes_stored"]
    for n in ("prune-nth", "prune-selfinfo"):
        c = by[(n, "long-1")]["cost"]
        assert c["prompt_tokens_effective"] < c["prompt_tokens_in"]
    for n in ("sparsity-magnitude", "sparsity-rotated", "phrase-merge"):
        prose = [r for r in recs if r["method"] == n and r["kind"] == "prose"]
        assert len(prose) == 1 and prose[0]["quality"]["bpb"] > 0
    assert by[("sparsity-rotated", "qa-1")]["speed_note"] == "n/a: no sparse kernel"
    assert tiny_lm.model.get_input_embeddings() is emb
    assert torch.equal(fwd.logits(ids, fwd.new_cache(), keep=0), before)


def test_unknown_parameter_is_an_input_error():
    from engine.errors import InputError

    for n in E2:
        try:
            make_method(n, no_such_knob=1)
        except InputError as e:
            assert "no_such_knob" in str(e)
        else:
            raise AssertionError(f"{n} accepted an unknown parameter")


def test_sinks_budget_matches_cake_budget():
    m = make_method("evict-sinks", budget=96)
    assert (m.sinks, m.window) == (4, 92)
    cake = make_method("evict-cake")
    sinks = make_method("evict-sinks")
    assert cake.budget == sinks.sinks + sinks.window  # defaults compare at equal budget
