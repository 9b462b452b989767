"""CAKE as its reference computes it: the hook's window attention equals the model's own (eager)
attention per head; layer budgets from summed entropy and variance, capped per layer; kept keys
are each head's top-B_l prefix keys by mean + γ·var (pooled, GQA-averaged) plus the window; a
prompt that fits is left whole; the decode rule keeps B_l + w; SnapKV / PyramidKV ablations."""
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


def _gqa(x, kvh):  # (H, n) -> (kvh, n): the mean of each KV head's query heads
    return x.view(kvh, x.shape[0] // kvh, -1).mean(1)


def _ref_scores(att, w, gamma, pool, kvh):
    """The reference's key score from eager attention (1, H, T, T): mean + γ·var (unbiased) over
    the window rows, prefix keys only, average-pooled (zero padding counted), GQA-averaged."""
    a = att[0][:, -w:, :-w]
    sc = a.mean(1) + gamma * a.var(1, unbiased=True)
    sc = F.avg_pool1d(sc.unsqueeze(1), pool, 1, pool // 2).squeeze(1)[:, :a.shape[-1]]
    return _gqa(sc, kvh)


def test_window_attention_matches_eager_per_head(eager_lm, tokenizer, sample_text):
    from engine.bench.methods.kv_evict_cake import _attention_modules, window_attention

    ids = tokenizer.encode(sample_text, add_special_tokens=False)[:70]
    w = 9
    atts, _ = _eager(eager_lm, ids)
    seen = {}

    def grab(module, args, kwargs, output):
        cos, sin = kwargs["position_embeddings"]
        cache = kwargs.get("cache") or kwargs.get("past_key_values")  # named cache since transformers 5.24
        keys = cache.layers[module.layer_idx].keys
        seen[module.layer_idx] = window_attention(module, kwargs["hidden_states"], cos, sin, keys, w)

    hs = [m.register_forward_hook(grab, with_kwargs=True) for m in _attention_modules(eager_lm.model)]
    try:
        _eager(eager_lm, ids)
    finally:
        for h in hs:
            h.remove()
    for i, att in enumerate(atts):
        assert torch.allclose(seen[i], att[0][:, -w:, :], atol=1e-5), i


def test_cake_prefill_keeps_reference_top_keys_with_preference_budgets(eager_lm, tokenizer, sample_text):
    from engine.bench.methods.kv_evict_cake import adjust_budgets

    ids = tokenizer.encode(sample_text, add_special_tokens=False)[:90]
    w, gamma, pool, budget = 6, 50.0, 5, 20
    m = CakeEviction(budget=budget, window=w, gamma=gamma, pool=pool)
    st = _prefill(eager_lm, m, ids)
    atts, full = _eager(eager_lm, ids)
    kvh = eager_lm.model.config.num_key_value_heads
    budgets = st.info["layer_budgets"]
    # budgets: (budget − w)·L split ∝ H^(1/τ1)·V^(1/τ2), entropy and variance summed as the reference does
    prefs = []
    for att in atts:
        a = att[0][:, -w:, :-w]
        ent = float(-(a * torch.log(a + 1e-10)).sum())
        var = float(a.var(1, unbiased=True).sum())
        prefs.append(ent * var)
    total = (budget - w) * len(atts)
    assert budgets == adjust_budgets([p / sum(prefs) * total for p in prefs], total, 90 - w)
    assert sum(budgets) == total
    for i, att in enumerate(atts):
        sc = _ref_scores(att, w, gamma, pool, kvh)
        top = torch.topk(sc, budgets[i], -1).indices.sort(-1).values
        idx = torch.cat([top, torch.arange(90 - w, 90).expand(kvh, w)], -1)
        keys = full.layers[i].keys[0]
        want = torch.stack([keys[h, idx[h]] for h in range(kvh)])
        got = st.cache.layers[i].keys[0]
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5), i


def test_cake_leaves_a_prompt_that_fits_whole(tiny_lm, sample_text):
    """An 88-token prompt under a 128 budget (the audit's case): nothing evicted, the output and
    its teacher-forced log-probs equal the baseline's (KL 0)."""
    q = Query(id="short", kind="qa", prompt="Who helped?", document=sample_text[:250])
    base = make_method("baseline")
    cake = make_method("evict-cake", budget=128, window=32)
    n = len(base.render_prompt(tiny_lm, q))
    assert n <= 128 + 32
    out = cake.run(tiny_lm, q, 6)
    assert out.extra["prefill_evicted"] is False and out.extra["evicted"] == 0
    assert out.token_ids == base.run(tiny_lm, q, 6).token_ids
    ref = base.run(tiny_lm, q, 6).token_ids
    assert torch.allclose(cake.teacher_forced_logprobs(tiny_lm, q, ref),
                          base.teacher_forced_logprobs(tiny_lm, q, ref), atol=1e-5)


@pytest.fixture(scope="module")
def eager1_lm(tokenizer):
    """One layer: the eager reference forward builds one mask, which fits an evicted cache only
    when every layer has the same length."""
    lm = tiny_llama(tokenizer, seed=3, layers=1)
    lm.model.set_attn_implementation("eager")
    return lm


def test_cake_decode_rule_uses_the_current_querys_attention(eager1_lm, tokenizer, sample_text):
    """While decoding, a layer above B_l + w keeps the B_l prefix entries the current query
    attends to most (pooled, GQA-averaged; eager attention as the reference) plus the last w."""
    import copy

    from engine.bench.methods.kv_evict_cake import _pool_gqa

    ids = tokenizer.encode(sample_text, add_special_tokens=False)[:60]
    w, budget, pool = 4, 16, 3
    m = CakeEviction(budget=budget, window=w, pool=pool)
    st = _prefill(eager1_lm, m, ids)
    sizes = [lay.keys.shape[-2] for lay in st.cache.layers]
    assert sizes == [b + w for b in st.info["layer_budgets"]]
    ref_cache = copy.deepcopy(st.cache)
    tok = ids[-1]
    with torch.inference_mode():
        out = eager1_lm.model(input_ids=torch.tensor([[tok]]), position_ids=torch.tensor([[st.pos]]),
                             cache=ref_cache, output_attentions=True, use_cache=True)
    m.feed(eager1_lm, st, [tok])
    kvh = eager1_lm.model.config.num_key_value_heads
    for i, lay in enumerate(st.cache.layers):
        b = st.info["layer_budgets"][i]
        assert lay.keys.shape[-2] == b + w  # back to B_l + w
        keys = ref_cache.layers[i].keys[0]  # (kvh, B_l + w + 1, d): before eviction
        n = keys.shape[1]
        sc = _pool_gqa(out.attentions[i][0][:, 0, :n - w], pool, kvh)
        top = torch.topk(sc, b, -1).indices.sort(-1).values
        idx = torch.cat([top, torch.arange(n - w, n).expand(kvh, w)], -1)
        want = torch.stack([keys[h, idx[h]] for h in range(kvh)])
        assert torch.allclose(lay.keys[0], want, atol=1e-5), i


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
    assert "_win" not in cake.extra


def test_snapkv_uniform_prefill_only_and_pyramid_budgets(tiny_lm, sample_text):
    from engine.bench.methods.kv_evict_cake import pyramid_budgets

    q = Query(id="doc", kind="qa", prompt="What did the neighbour do?", document=sample_text[:1500])
    layers = tiny_lm.model.config.num_hidden_layers
    snap = make_method("evict-snapkv", budget=40, window=8).run(tiny_lm, q, 10, fixed_length=True)
    assert snap.extra["layer_budgets"] == [32] * layers
    assert snap.extra["kv_tokens_kept"] == [40 + 9] * layers  # grows while decoding: no decode rule
    pyr = pyramid_budgets(56, 8, 400, 20.0)
    assert pyr[0] > pyr[-1] and all(a >= b for a, b in zip(pyr, pyr[1:]))
    assert pyr[0] == round(2 * 56 - 56 / 20) and abs(sum(pyr) - 56 * 8) <= 8
    capped = pyramid_budgets(56, 8, 60, 20.0)  # the largest capped at the prefix, still a pyramid
    assert max(capped) == 60 and capped[0] > capped[-1]
    assert pyramid_budgets(56, 8, 50, 20.0) == [50] * 8  # does not fit: uniform (at most the prefix)


@settings(max_examples=60, deadline=None)
@given(hs.lists(hs.floats(0, 10), min_size=1, max_size=8), hs.integers(1, 60), hs.data())
def test_adjust_budgets_caps_each_layer_and_keeps_the_total(prefs, cap, data):
    from engine.bench.methods.kv_evict_cake import adjust_budgets

    total = data.draw(hs.integers(len(prefs), cap * len(prefs)))
    s = sum(prefs) or 1.0
    out = adjust_budgets([p / s * total for p in prefs], total, cap)
    assert sum(out) == total and all(0 <= b <= cap for b in out)


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
                                dict(tau1=0.0), dict(pool=0), dict(tau2=float("nan"))])
def test_bad_params(kw):
    with pytest.raises(InputError):
        CakeEviction(**kw)
    with pytest.raises(InputError):
        make_method("evict-pyramidkv", beta=0.5)
