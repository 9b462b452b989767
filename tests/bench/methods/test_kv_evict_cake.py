"""CAKE-style eviction: the hook's window attention equals the model's own (eager) attention,
kept keys are exactly each head's top-B_l prefix keys by mean + γ·var plus the window, budgets
split the same total as the sinks row, per-layer bytes are recorded."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as hs

from engine.errors import InputError
from engine.bench.methods import make_method
from engine.bench.methods.base import Query
from engine.bench.methods.kv_evict_cake import CakeEviction, split_budget
from engine.lm.tiny import tiny_llama


@pytest.fixture(scope="module")
def eager_lm(tokenizer):
    lm = tiny_llama(tokenizer, seed=3, layers=2)
    lm.model.set_attn_implementation("eager")
    return lm


def _prefill(lm, m, ids):
    st = m.new_state(lm, Query(id="t", kind="chat", prompt="x"), ids)
    m.feed(lm, st, ids)
    return st


def _eager(lm, ids):
    with torch.inference_mode():
        out = lm.model(input_ids=torch.tensor([ids]), output_attentions=True, use_cache=True)
    return out.attentions, out.past_key_values


def _gqa(att, kvh):  # (1, H, T, T) -> (kvh, T, T)
    h = att.shape[1]
    return att[0].view(kvh, h // kvh, *att.shape[2:]).mean(1)


def test_window_attention_matches_eager(eager_lm, tokenizer, sample_text):
    ids = tokenizer.encode(sample_text, add_special_tokens=False)[:70]
    w = 9
    m = CakeEviction(budget=200, window=w, gamma=0.0, pool=1)  # no eviction: scores stay whole
    st = _prefill(eager_lm, m, ids)
    atts, _ = _eager(eager_lm, ids)
    kvh = eager_lm.model.config.num_key_value_heads
    for i, att in enumerate(atts):
        want = _gqa(att, kvh)[:, -w:, :].mean(1)
        got = st.info["_cake"].layers[i].scores
        assert torch.allclose(got, want, atol=1e-5), (i, (got - want).abs().max())


def test_kept_keys_are_top_scored_plus_window(eager_lm, tokenizer, sample_text):
    ids = tokenizer.encode(sample_text, add_special_tokens=False)[:90]
    w, gamma, pool = 6, 50.0, 3
    m = CakeEviction(budget=20, window=w, gamma=gamma, pool=pool)
    st = _prefill(eager_lm, m, ids)
    atts, full = _eager(eager_lm, ids)
    kvh = eager_lm.model.config.num_key_value_heads
    budgets = st.info["layer_budgets"]
    assert sum(budgets) == (20 - w) * len(atts)
    for i, att in enumerate(atts):
        a = _gqa(att, kvh)[:, -w:, :]
        sc = a.mean(1) + gamma * a.var(1, unbiased=False)
        sc = F.avg_pool1d(sc.unsqueeze(1), pool, 1, pool // 2, count_include_pad=False).squeeze(1)
        top = torch.topk(sc[:, :90 - w], budgets[i], -1).indices.sort(-1).values
        idx = torch.cat([top, torch.arange(90 - w, 90).expand(kvh, w)], -1)
        keys = full.layers[i].keys[0]
        want = torch.stack([keys[h, idx[h]] for h in range(kvh)])
        got = st.cache.layers[i].keys[0]
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-5)


def test_equal_budget_with_sinks_row_and_per_layer_bytes(tiny_lm, sample_text):
    q = Query(id="doc", kind="qa", prompt="What did the neighbour do?", document=sample_text[:1500])
    budget = 40
    cake = make_method("evict-cake", budget=budget, window=8).run(tiny_lm, q, 12)
    sinks = make_method("evict-sinks", sinks=4, window=budget - 4).run(tiny_lm, q, 12)
    base = make_method("baseline").run(tiny_lm, q, 12)
    assert cake.cost["kv_bytes_stored"] == sinks.cost["kv_bytes_stored"]
    assert cake.cost["kv_bytes_stored"] < base.cost["kv_bytes_stored"] / 4
    per_layer = cake.extra["kv_bytes_per_layer"]
    assert sum(per_layer) == cake.cost["kv_bytes_stored"]
    assert sum(cake.extra["kv_tokens_kept"]) == budget * tiny_lm.model.config.num_hidden_layers
    assert "_cake" not in cake.extra


def test_teacher_forced_logprobs_shape(tiny_lm, sample_text):
    q = Query(id="doc", kind="qa", prompt="Who helped?", document=sample_text[:800])
    lp = make_method("evict-cake", budget=24, window=4).teacher_forced_logprobs(tiny_lm, q, [5, 6, 7])
    assert lp.shape == (3, tiny_lm.model.config.vocab_size)
    assert torch.allclose(lp.exp().sum(-1), torch.ones(3), atol=1e-4)


@settings(max_examples=60, deadline=None)
@given(hs.lists(hs.floats(0, 10), min_size=1, max_size=8), hs.integers(0, 200),
       hs.data())
def test_split_budget_properties(prefs, total, data):
    caps = data.draw(hs.lists(hs.integers(0, 60), min_size=len(prefs), max_size=len(prefs)))
    out = split_budget(prefs, total, caps)
    assert sum(out) == min(total, sum(caps))
    assert all(0 <= o <= c for o, c in zip(out, caps))


def test_split_budget_is_proportional():
    assert split_budget([1.0, 3.0], 40, [100, 100]) == [10, 30]
    assert split_budget([1.0, 3.0], 40, [100, 20]) == [20, 20]


@pytest.mark.parametrize("kw", [dict(budget=0), dict(budget=8, window=8), dict(gamma=-1.0),
                                dict(tau1=0.0), dict(pool=0)])
def test_bad_params(kw):
    with pytest.raises(InputError):
        CakeEviction(**kw)
