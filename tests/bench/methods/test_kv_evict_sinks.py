"""Sinks + recent eviction: the cache really shrinks, kept keys are fed at their true positions
(checked exactly on a one-layer model against a fresh forward over the kept tokens), and true
positions beat default ones in next-token KL to the full context on the bundled model."""
from __future__ import annotations

import pytest
import torch

from engine.errors import InputError
from engine.bench.methods import make_method
from engine.bench.methods.base import Query
from engine.bench.methods.kv_evict_sinks import SinksRecent, keep_sinks_recent


def _ids(tok, text, n):
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) >= n
    return ids[:n]


def _kl(p_logits, q_logits):
    p = torch.log_softmax(p_logits.float(), -1)
    q = torch.log_softmax(q_logits.float(), -1)
    return float((p.exp() * (p - q)).sum())


def _evicted_next(lm, ids, **kw):
    m = SinksRecent(**kw)
    st = m.new_state(lm, Query(id="t", kind="chat", prompt="x"), ids)
    m.feed(lm, st, ids[:-1])
    return m, st, m.feed(lm, st, ids[-1:])[-1]


def test_keep_sinks_recent_keeps_exact_slices(tiny_lm, tokenizer, sample_text):
    ids = _ids(tokenizer, sample_text, 50)
    m = SinksRecent()
    fwd = m.forward(tiny_lm)
    cache = fwd.new_cache()
    fwd.logits(torch.tensor([ids]), cache)
    before = [(l.keys.clone(), l.values.clone()) for l in cache.layers]
    dropped = keep_sinks_recent(cache, 3, 10)
    assert dropped == (50 - 13) * len(before)
    for (k, v), lay in zip(before, cache.layers):
        assert torch.equal(lay.keys, torch.cat([k[..., :3, :], k[..., -10:, :]], -2))
        assert torch.equal(lay.values, torch.cat([v[..., :3, :], v[..., -10:, :]], -2))
        assert lay.keys.is_contiguous() and lay.keys.untyped_storage().nbytes() == lay.keys.nbytes


def test_kv_bytes_shrink_and_run_reports(tiny_lm, sample_text):
    q = Query(id="doc", kind="qa", prompt="What did the neighbour do?", document=sample_text[:1200])
    base = make_method("baseline").run(tiny_lm, q, 6)
    ev = make_method("evict-sinks", sinks=4, window=32).run(tiny_lm, q, 6)
    n_layers = tiny_lm.model.config.num_hidden_layers
    per_tok = base.cost["kv_bytes_stored"] // (base.cost["prompt_tokens_in"] + base.cost["new_tokens"] - 1)
    assert ev.cost["kv_bytes_stored"] == per_tok * 36
    assert ev.cost["kv_bytes_stored"] < base.cost["kv_bytes_stored"] / 4
    # the peak is the whole prefilled prompt (eviction happens after the prefill)
    assert ev.cost["kv_bytes_peak"] == per_tok * ev.cost["prompt_tokens_in"]
    assert ev.extra["kv_tokens_kept"] == [36] * n_layers
    assert ev.cost["prompt_tokens_effective"] == base.cost["prompt_tokens_effective"]


def test_true_positions_match_fresh_forward_on_kept_tokens(tiny1_lm, tokenizer, sample_text):
    """One layer: a key depends only on its token and position, so the evicted cache + true
    position must equal a fresh forward over sinks + recent + last token at their positions."""
    ids = _ids(tokenizer, sample_text, 80)
    s, w = 4, 20
    _, st, got = _evicted_next(tiny1_lm, ids, sinks=s, window=w)
    assert st.pos == 80 and st.info["evicted"] == 80 - s - w  # after the prefill, then the step
    kept = list(range(s)) + list(range(79 - w, 80))
    fwd = SinksRecent().forward(tiny1_lm)
    want = fwd.logits(torch.tensor([[ids[i] for i in kept]]), fwd.new_cache(),
                      position_ids=torch.tensor([kept]))[0, -1]
    assert torch.allclose(got, want, atol=1e-4)
    _, _, wrong = _evicted_next(tiny1_lm, ids, sinks=s, window=w, positions="default")
    assert not torch.allclose(wrong, want, atol=1e-3)


@pytest.mark.slow
def test_true_positions_beat_default_on_bundled_model(smol_lm, sample_text):
    ids = _ids(smol_lm.tokenizer, sample_text, 160)
    fwd = SinksRecent().forward(smol_lm)
    full = fwd.logits(torch.tensor([ids]), fwd.new_cache())[0, -1]
    _, _, true_pos = _evicted_next(smol_lm, ids, sinks=4, window=40)
    _, _, default_pos = _evicted_next(smol_lm, ids, sinks=4, window=40, positions="default")
    kl_true, kl_default = _kl(full, true_pos), _kl(full, default_pos)
    assert kl_true < kl_default
    assert kl_true < 0.2 < kl_default


@pytest.mark.parametrize("kw", [dict(sinks=-1), dict(window=0), dict(window=2.5),
                                dict(positions="zero")])
def test_bad_params(kw):
    with pytest.raises(InputError):
        SinksRecent(**kw)


def test_sliding_window_model_is_refused(tokenizer):
    from transformers import MistralConfig, MistralForCausalLM

    from engine.lm.model import from_parts

    cfg = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                        sliding_window=16)
    lm = from_parts(MistralForCausalLM(cfg), tokenizer, name="tiny-mistral")
    q = Query(id="t", kind="chat", prompt="hello")
    with pytest.raises(InputError, match="sliding-window"):
        SinksRecent().run(lm, q, 2)
