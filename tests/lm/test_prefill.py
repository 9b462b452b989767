"""Chunked prefill (issue 16.2) on both forward paths: the same logits and cache as one call, a
cancel between chunks (the cache then holds a prefix), progress tokens/total with an ETA, and
generate() stopping during a long prompt's prefill."""
from __future__ import annotations

import pytest
import torch

from engine.lm.forward import StandardForward, get_forward
from engine.lm.fastpath import LeanForward
from engine.lm.generate import generate
from engine.lm.prefill import prefill
from engine.lm.config import SamplingConfig
from engine.progress import Cancelled, CancelToken


@pytest.fixture(params=["standard", "fast"])
def fwd(request, tiny_lm):
    tiny_lm.engine_path = request.param
    f = get_forward(tiny_lm)
    assert isinstance(f, StandardForward if request.param == "standard" else LeanForward)
    yield f
    tiny_lm.engine_path = "fast"


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, 4000, (1, n), generator=g)


def test_chunked_equals_one_call_and_continues_identically(fwd):
    ids = _ids(700)
    ref_cache = fwd.new_cache()
    ref = fwd.logits(ids, ref_cache, keep=1)
    cache = fwd.new_cache()
    seen = []
    # a tiny time target forces many small chunks (the sizes adapt between MIN and 2× the last)
    out = prefill(fwd, ids, cache, progress=seen.append, target_s=1e-4)
    chunks = [p.metrics["chunk"] for p in seen if p.step]
    assert len(chunks) > 3 and sum(chunks) == 700
    assert fwd.cache_len(cache) == fwd.cache_len(ref_cache) == 700
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    nxt = torch.tensor([[42]])
    assert torch.allclose(fwd.logits(nxt, cache), fwd.logits(nxt, ref_cache), atol=1e-4, rtol=1e-4)


def test_progress_counts_tokens_with_an_eta(fwd):
    seen = []
    prefill(fwd, _ids(300), fwd.new_cache(), progress=seen.append, target_s=1e-4)
    assert seen[0].phase == "prefill" and seen[0].step == 0 and seen[0].total == 300
    steps = [p.step for p in seen]
    assert steps == sorted(steps) and steps[-1] == 300
    assert all("eta_s" in p.metrics and "tok_s" in p.metrics for p in seen[1:])
    assert seen[-1].metrics["eta_s"] == 0


def test_short_prompt_is_one_call(fwd):
    seen = []
    prefill(fwd, _ids(20), fwd.new_cache(), progress=seen.append)
    assert seen == []


def test_cancel_between_chunks_leaves_a_prefix(fwd):
    ids = _ids(600)
    token = CancelToken()
    cache = fwd.new_cache()

    def progress(p):
        if p.step >= 100:
            token.cancel("user")

    with pytest.raises(Cancelled):
        prefill(fwd, ids, cache, progress=progress, cancel=token, target_s=1e-4)
    n = fwd.cache_len(cache)
    assert 100 <= n < 600
    # the cache is exactly the one-call cache of that prefix
    ref_cache = fwd.new_cache()
    fwd.logits(ids[:, :n], ref_cache)
    nxt = torch.tensor([[7]])
    assert torch.allclose(fwd.logits(nxt, cache), fwd.logits(nxt, ref_cache), atol=1e-4, rtol=1e-4)


def test_generate_stops_during_prefill(fwd, tiny_lm):
    token = CancelToken()
    seen = []

    def progress(p):
        seen.append(p)
        if p.phase == "prefill" and p.step > 0:
            token.cancel("user")

    res, cache = generate(tiny_lm, _ids(800)[0].tolist(), SamplingConfig(max_new_tokens=5),
                          progress=progress, cancel=token)
    assert res.stop_reason == "cancelled" and res.new_tokens == 0
    assert fwd.cache_len(cache) < 800
    assert not any(p.phase == "generate" and p.step > 0 for p in seen)
