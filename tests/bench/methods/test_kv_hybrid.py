"""The hybrid row (contiguous buffer + CAKE eviction): its decisions and outputs are evict-cake's
(same kept entries after every step, same tokens, log-probs within fp32 rounding), the kept
entries are compacted inside the one reservation (its address never changes, nothing else is
allocated for the cache), the compaction copies are counted, and a prompt that fits is
kv-contiguous exactly."""
from __future__ import annotations

import pytest
import torch

from engine.bench.methods import make_method
from engine.bench.methods.base import Query
from engine.bench.methods.combined import ALL_PARTS
from engine.bench.methods.kv_contiguous import ContiguousLayer
from engine.errors import InputError

CAKE = {"budget": 40, "window": 8}


def _per_token(lm) -> int:
    c = lm.model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 4


@pytest.fixture(scope="module")
def long_q(sample_text):
    return Query(id="doc", kind="qa", prompt="What did the neighbour do?", document=sample_text[:1500])


def test_same_entries_kept_as_cake_after_every_step(tiny_lm, long_q):
    """Prefill and eight decode steps fed the same tokens: after each one every layer holds
    exactly evict-cake's entries (same order), in views of the buffer reserved before the
    prefill."""
    cake, hyb = make_method("evict-cake", **CAKE), make_method("hybrid-kv", **CAKE)
    prompt = cake.render_prompt(tiny_lm, long_q)
    assert len(prompt) > CAKE["budget"] + CAKE["window"]  # the prompt does not fit: prefill evicts
    sc, sh = cake.new_state(tiny_lm, long_q, prompt), hyb.new_state(tiny_lm, long_q, prompt)
    bufs = [(lay.kbuf.data_ptr(), lay.vbuf.data_ptr()) for lay in sh.cache.layers]
    toks = [int(cake.feed(tiny_lm, sc, prompt)[-1].argmax())]
    hyb.feed(tiny_lm, sh, prompt)
    for step in range(9):
        assert sh.info["evicted"] == sc.info["evicted"] > 0
        assert sh.info["layer_budgets"] == sc.info["layer_budgets"]
        assert sh.info["kv_tokens_kept"] == sc.info["kv_tokens_kept"]
        for i, (lc, lh) in enumerate(zip(sc.cache.layers, sh.cache.layers)):
            assert isinstance(lh, ContiguousLayer)
            assert (lh.kbuf.data_ptr(), lh.vbuf.data_ptr()) == bufs[i]  # never reallocated
            assert lh.keys.data_ptr() == bufs[i][0] and lh.values.data_ptr() == bufs[i][1]
            assert torch.allclose(lh.keys, lc.keys, atol=1e-6), (step, i)
            assert torch.allclose(lh.values, lc.values, atol=1e-6), (step, i)
        if step == 8:
            break
        a = cake.feed(tiny_lm, sc, toks[-1:])[-1]
        b = hyb.feed(tiny_lm, sh, toks[-1:])[-1]
        assert torch.allclose(a, b, atol=1e-4)
        toks.append(int(a.argmax()))
    assert sh.info["kv_compaction_bytes"] > 0


def test_same_tokens_and_logprobs_as_cake_with_the_copies_counted(tiny_lm, long_q):
    cake, hyb = make_method("evict-cake", **CAKE), make_method("hybrid-kv", **CAKE)
    a, b = cake.run(tiny_lm, long_q, 10, fixed_length=True), hyb.run(tiny_lm, long_q, 10, fixed_length=True)
    assert a.token_ids == b.token_ids
    for k in ("evicted", "layer_budgets", "kv_tokens_kept", "prefill_evicted", "kv_bytes_per_layer"):
        assert a.extra[k] == b.extra[k], k
    assert torch.allclose(cake.teacher_forced_logprobs(tiny_lm, long_q, a.token_ids),
                          hyb.teacher_forced_logprobs(tiny_lm, long_q, a.token_ids), atol=1e-5)
    per = _per_token(tiny_lm)
    assert b.cost["kv_bytes_stored"] == a.cost["kv_bytes_stored"]  # the same entries counted
    assert b.cost["kv_bytes_allocated"] == tiny_lm.context_length * per  # the reservation, held
    assert b.extra["reserved_positions"] == tiny_lm.context_length
    # every decode step evicts (a layer over B_l + w), so each writes the new token and moves rows
    assert b.cost["kv_copy_bytes_per_token"] > per
    assert b.extra["kv_compaction_bytes"] % 2 == 0 and b.extra["kv_compaction_bytes"] > 0


def test_a_prompt_that_fits_is_kv_contiguous(tiny_lm, sample_text):
    q = Query(id="short", kind="qa", prompt="Who helped?", document=sample_text[:250])
    cont, hyb = make_method("kv-contiguous"), make_method("hybrid-kv", budget=128, window=32)
    assert len(hyb.render_prompt(tiny_lm, q)) <= 128 + 32
    a, b = cont.run(tiny_lm, q, 8, fixed_length=True), hyb.run(tiny_lm, q, 8, fixed_length=True)
    assert a.token_ids == b.token_ids
    assert b.extra["prefill_evicted"] is False and b.extra["evicted"] == 0
    assert b.extra["kv_compaction_bytes"] == 0
    per = _per_token(tiny_lm)
    assert b.cost["kv_copy_bytes_per_token"] == a.cost["kv_copy_bytes_per_token"] == per
    for k in ("kv_bytes_stored", "kv_bytes_allocated"):
        assert a.cost[k] == b.cost[k], k
    assert torch.allclose(cont.teacher_forced_logprobs(tiny_lm, q, a.token_ids),
                          hyb.teacher_forced_logprobs(tiny_lm, q, a.token_ids), atol=1e-5)


def test_compact_moves_only_what_moves_and_counts_it():
    """A layer of 3 heads × 10 positions keeps a different set per head: the result is the
    gather; rows already in place are not copied; each moved row is counted twice (staging
    copy and write back)."""
    torch.manual_seed(0)
    lay = ContiguousLayer(16)
    k, v = torch.randn(1, 3, 10, 4), torch.randn(1, 3, 10, 4)
    lay.update(k, v)
    assert lay.bytes_written == 2 * k.numel() * 4
    idx = torch.tensor([[0, 1, 2, 3, 4, 5, 7], [0, 1, 2, 3, 4, 5, 6], [1, 3, 4, 6, 7, 8, 9]])
    before = lay.bytes_written
    lay.compact(idx)
    want = torch.stack([k[0, h, idx[h]] for h in range(3)]).unsqueeze(0)
    assert torch.equal(lay.keys, want) and lay.get_seq_length() == 7
    assert torch.equal(lay.values, torch.stack([v[0, h, idx[h]] for h in range(3)]).unsqueeze(0))
    moved_rows = 1 + 0 + 7  # head 0 moves position 6 only, head 1 nothing, head 2 all seven
    assert lay.bytes_written - before == lay.bytes_compacted == 2 * 2 * moved_rows * 4 * 4
    lay.update(torch.ones(1, 3, 1, 4), torch.ones(1, 3, 1, 4))  # appends after the kept rows
    assert lay.get_seq_length() == 8 and torch.equal(lay.keys[0, :, 7], torch.ones(3, 4))
    with pytest.raises(InputError, match="cannot keep"):
        lay.compact(torch.zeros(2, 3, dtype=torch.long))


def test_params_and_registry():
    m = make_method("hybrid-kv", budget=64, window=16, gamma=10.0, reserve=4096)
    assert m.params == {"budget": 64, "window": 16, "pool": 5, "gamma": 10.0, "tau1": 1.0,
                        "tau2": 1.0, "reserve": 4096}
    assert m.label == "Hybrid KV: contiguous buffer + CAKE eviction" and "compacted" in m.simplification
    with pytest.raises(InputError, match="unknown parameter.*sinks") as e:
        make_method("hybrid-kv", sinks=4)
    assert "reserve" in e.value.hint
    for bad in (dict(reserve=0), dict(budget=8, window=8), dict(tau1=0.0)):
        with pytest.raises(InputError):
            make_method("hybrid-kv", **bad)
    assert ALL_PARTS["cache"] == "hybrid-kv"
    assert make_method("prune-selfinfo+hybrid-kv").c.name == "hybrid-kv"


def test_all_combined_caches_in_the_hybrid(tiny_lm, long_q):
    from engine.bench.suite import load_suite

    m = make_method("all-combined", **{"cache.budget": 40, "cache.window": 8, "model.sparsity": 0.3,
                                       "model.calib_tokens": 192})
    m.use_suite(load_suite("core-v1"))
    assert "hybrid-kv" in m.label and "cache.reserve" in m.params
    assert "contiguous buffer + CAKE" in m.simplification
    m.prepare(tiny_lm)
    try:
        out = m.run(tiny_lm, long_q, 6, fixed_length=True)
    finally:
        m.restore(tiny_lm)
    assert out.extra["prefill_evicted"] is True and out.extra["kv_compaction_bytes"] > 0
    assert out.cost["kv_bytes_allocated"] == tiny_lm.context_length * _per_token(tiny_lm)
    assert sum(out.extra["kv_tokens_kept"]) == 40 * tiny_lm.model.config.num_hidden_layers


def test_the_cuda_reservation_is_the_request_only_when_its_length_is_known():
    """No lazy commit on CUDA: a run reserves prompt + new tokens; a state made outside the
    method's own run (teacher forcing, a combination) feeds an unknown number of targets and
    reserves the context (it used to reserve prompt + 2 and overflow)."""
    from types import SimpleNamespace

    lm = SimpleNamespace(torch_device=torch.device("cuda"), context_length=2048)
    for name in ("kv-contiguous", "hybrid-kv"):
        m = make_method(name)
        assert m.positions(lm, 100) == 2048
        m._need = 24
        assert m.positions(lm, 100) == 125
        assert m.positions(SimpleNamespace(torch_device=torch.device("cpu"), context_length=2048), 100) == 2048
