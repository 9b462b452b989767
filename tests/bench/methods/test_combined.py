"""Combinations (PROMPT+CACHE) are one method measured as a whole: the pruned prompt goes through
the cache side's cache, bytes are counted from that cache, the compressor time is charged."""
from __future__ import annotations

import json

import pytest

from engine.bench.harness import BenchConfig, run_bench
from engine.errors import InputError
from engine.bench.methods import make_method, parse_methods
from engine.bench.methods.base import Query
from engine.bench.methods.combined import Combined


def test_parse_and_bad_combinations():
    assert parse_methods("baseline,prune-nth+kv-fp8") == ["baseline", "prune-nth+kv-fp8"]
    for bad in ("kv-fp8+prune-nth", "prune-nth+prune-selfinfo", "prune-nth+kv-fp8+evict-sinks",
                "sparsity-rotated+kv-fp8"):
        with pytest.raises(InputError):
            parse_methods(bad)
        with pytest.raises(InputError):
            make_method(bad)
    with pytest.raises(InputError, match="unknown parameter 'n'") as e:
        make_method("prune-nth+kv-fp8", n=3)
    assert "prompt.KEY or cache.KEY" in e.value.hint
    m = make_method("prune-nth+evict-sinks", **{"prompt.n": 3, "cache.sinks": 2, "cache.window": 30})
    assert isinstance(m, Combined) and m.p.params["n"] == 3 and m.c.params["sinks"] == 2
    assert m.params["prompt.n"] == 3 and m.params["cache.window"] == 30
    assert m.name == "prune-nth+evict-sinks" and "measured together" in m.label


def test_combination_runs_as_one_configuration(tiny_lm):
    q = Query(id="d", kind="long", prompt="What colour is the door?",
              document=" ".join(f"Sentence {i} says the door is red and the wall is blue." for i in range(20)))
    prune = make_method("prune-nth", n=3)
    fp8 = make_method("kv-fp8")
    both = make_method("prune-nth+kv-fp8", **{"prompt.n": 3})
    a = prune.run(tiny_lm, q, 5)
    b = fp8.run(tiny_lm, q, 5)
    c = both.run(tiny_lm, q, 5)
    # the pruned prompt: fewer tokens fed than the full prompt, same count as pruning alone
    assert c.cost["prompt_tokens_effective"] == a.cost["prompt_tokens_effective"]
    assert c.cost["prompt_tokens_effective"] < c.cost["prompt_tokens_in"] == b.cost["prompt_tokens_in"]
    # FP8 storage of that shorter prompt: smaller than either row alone (measured, not multiplied)
    assert c.cost["kv_bytes_stored"] < a.cost["kv_bytes_stored"] / 3
    assert c.cost["kv_bytes_stored"] < b.cost["kv_bytes_stored"]
    # the compressor's seconds are charged to TTFT and total
    assert c.cost["aux_s"] > 0 and c.cost["prefill_s"] >= c.cost["aux_s"]
    assert c.cost["total_s"] >= c.cost["prefill_s"]


def test_combination_through_the_harness(tiny_lm, tmp_path):
    name = "prune-selfinfo+evict-sinks"
    cfg = BenchConfig(methods=["baseline", name], repeats=1, max_new_tokens=4, warmup=False,
                      query_ids=["long-1"], params={name: {"cache.sinks": 4, "cache.window": 60}})
    out = tmp_path / "runs.jsonl"
    summary = run_bench(tiny_lm, cfg, out)
    recs = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    assert summary.errors == 0 and {r["method"] for r in recs} == {"baseline", name}
    base, comb = (next(r for r in recs if r["method"] == m) for m in ("baseline", name))
    assert comb["status"] == "ok" and comb["params"]["cache.window"] == 60
    assert comb["cost"]["prompt_tokens_effective"] < base["cost"]["prompt_tokens_effective"]
    assert comb["cost"]["kv_bytes_stored"] < base["cost"]["kv_bytes_stored"]
    assert comb["quality"]["kl_mean"] > 0
