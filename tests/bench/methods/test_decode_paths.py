"""The decode-path rows through the real bench harness (tiny model): the exact lean row matches
the baseline, the int8 row is labelled INEXACT, measured step by step (non-zero but small KL) and
leaves the shared model as it was."""
from __future__ import annotations

import json

import pytest
import torch

from engine.bench.harness import BenchConfig, run_bench
from engine.bench.methods import make_method, method_names
from engine.lm.quantized import Int8LeanForward, int8_supported

pytestmark = pytest.mark.skipif(int8_supported() is not None, reason=str(int8_supported()))


def test_registered_and_labelled():
    assert {"lean-fp32", "int8-decode"} <= set(method_names())
    m = make_method("int8-decode")
    assert "INEXACT" in m.label and m.describe()["forward"] == "int8"
    assert "INEXACT" not in make_method("lean-fp32").label


def test_rows_through_the_harness(tiny_lm, tmp_path):
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    fwd = make_method("baseline").forward(tiny_lm)
    before = fwd.logits(ids, fwd.new_cache(), keep=0)
    assert isinstance(make_method("int8-decode").forward(tiny_lm), Int8LeanForward)
    cfg = BenchConfig(methods=["baseline", "lean-fp32", "int8-decode"], repeats=1, max_new_tokens=8,
                      warmup=False, query_ids=["chat-1", "qa-1"])
    out = tmp_path / "runs.jsonl"
    summary = run_bench(tiny_lm, cfg, out)
    recs = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    bad = [(r["method"], r["prompt_id"], r["message"]) for r in recs if r["status"] != "ok"]
    assert not bad and summary.errors == 0
    by = {(r["method"], r["prompt_id"]): r for r in recs}
    for q in ("chat-1", "qa-1"):
        lean, q8 = by[("lean-fp32", q)], by[("int8-decode", q)]
        assert lean["quality"]["kl_mean"] < 1e-6 and lean["quality"]["first_divergence"] is None
        assert 0.0 < q8["quality"]["kl_mean"] < 0.05  # inexact, but close (tiny model)
        assert "INEXACT" in q8["label"]
        assert q8["cost"]["kv_bytes_stored"] == by[("baseline", q)]["cost"]["kv_bytes_stored"]
    assert torch.equal(fwd.logits(ids, fwd.new_cache(), keep=0), before)
