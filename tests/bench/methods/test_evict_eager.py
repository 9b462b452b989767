"""The evicting cache rows under eager attention. Hugging Face builds one mask per forward, sized
from layer 0's cache, while CAKE / PyramidKV layers hold different lengths after eviction; each
attention module now gets the mask built for its own layer (EvictingMethod.feed). Under eager
attention every evicting row decodes after eviction and gives SDPA's tokens and log-probs
(within 1e-5); several tokens fed at once after eviction (causal among themselves, every cached
entry visible) equal feeding them one by one; other attention implementations are refused."""
from __future__ import annotations

import pytest
import torch

from engine.bench.methods import make_method
from engine.bench.methods.base import Query
from engine.bench.methods.kv_evict_sinks import attention_modules
from engine.errors import InputError
from engine.lm.tiny import tiny_llama

ROWS = {
    "evict-cake": {"budget": 24, "window": 4},
    "evict-pyramidkv": {"budget": 24, "window": 4},
    "evict-snapkv": {"budget": 24, "window": 4},
    "hybrid-kv": {"budget": 24, "window": 4},
    "evict-sinks": {"sinks": 2, "window": 20},
}
STEPS = 6


def _tiny(tokenizer, impl):
    lm = tiny_llama(tokenizer, seed=5, layers=4)
    lm.model.set_attn_implementation(impl)
    assert lm.model.config._attn_implementation == impl
    return lm


@pytest.fixture(scope="module")
def sdpa_lm(tokenizer):
    return _tiny(tokenizer, "sdpa")


@pytest.fixture(scope="module")
def eager_lm(tokenizer):
    return _tiny(tokenizer, "eager")


@pytest.fixture(scope="module")
def q(sample_text):
    return Query(id="doc", kind="qa", prompt="What did the neighbour do?", document=sample_text[:700])


def _decode(lm, name, q, steps=STEPS):
    """Prefill, then ``steps`` greedy decode steps: (tokens, log-prob of each, kept per layer
    after every step)."""
    m = make_method(name, **ROWS[name])
    ids = m.render_prompt(lm, q)
    st = m.new_state(lm, q, ids)
    logits = m.feed(lm, st, ids)
    toks, lps, kept = [], [], [list(st.info["kv_tokens_kept"])]
    for _ in range(steps):
        lp = torch.log_softmax(logits[-1].float(), -1)
        t = int(lp.argmax())
        toks.append(t)
        lps.append(float(lp[t]))
        logits = m.feed(lm, st, [t])
        kept.append(list(st.info["kv_tokens_kept"]))
    return toks, torch.tensor(lps), kept, st


@pytest.mark.parametrize("name", sorted(ROWS))
def test_eager_decodes_after_eviction_as_sdpa(eager_lm, sdpa_lm, q, name):
    toks_e, lps_e, kept_e, st = _decode(eager_lm, name, q)
    toks_s, lps_s, kept_s, _ = _decode(sdpa_lm, name, q)
    assert st.info["evicted"] > 0  # the prompt was cut: the decode steps ran on an evicted cache
    assert toks_e == toks_s
    assert torch.allclose(lps_e, lps_s, atol=1e-5), (lps_e - lps_s).abs().max()
    assert kept_e == kept_s
    if name in ("evict-cake", "evict-pyramidkv", "hybrid-kv"):
        # the case the one shared mask could not serve: layers of different lengths
        assert len(set(kept_e[1])) > 1, kept_e[1]


def test_each_layer_gets_a_mask_of_its_own_length(eager_lm, q):
    """Eager decode step after PyramidKV's eviction: every layer's mask covers exactly that
    layer's cached entries + the new token, all visible (zeros)."""
    m = make_method("evict-pyramidkv", **ROWS["evict-pyramidkv"])
    ids = m.render_prompt(eager_lm, q)
    st = m.new_state(eager_lm, q, ids)
    m.feed(eager_lm, st, ids)
    before = [lay.keys.shape[-2] for lay in st.cache.layers]
    assert len(set(before)) > 1
    seen = {}

    def grab(module, args, kwargs, output):  # after the method's pre-hook: the mask attention got
        seen[module.layer_idx] = kwargs["attention_mask"]

    hs = [mod.register_forward_hook(grab, with_kwargs=True)
          for mod in attention_modules(eager_lm.model)]
    try:
        m.feed(eager_lm, st, [ids[-1]])
    finally:
        for h in hs:
            h.remove()
    for i, n in enumerate(before):
        mask = seen[i]
        assert tuple(mask.shape) == (1, 1, 1, n + 1), (i, tuple(mask.shape))
        assert bool((mask == 0).all())


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("name", ["evict-pyramidkv", "evict-snapkv"])
def test_several_tokens_after_eviction_equal_one_by_one(eager_lm, sdpa_lm, q, tokenizer, name, impl):
    """A multi-token feed on an evicted cache (teacher forcing's shape): causal among the new
    tokens, every cached entry visible. These rows do not evict while decoding, so one chunk
    must equal the same tokens fed one at a time."""
    lm = eager_lm if impl == "eager" else sdpa_lm
    more = tokenizer.encode(" The neighbour watered the garden at dawn.", add_special_tokens=False)
    assert len(more) > 3
    out = []
    for chunked in (True, False):
        m = make_method(name, **ROWS[name])
        ids = m.render_prompt(lm, q)
        st = m.new_state(lm, q, ids)
        m.feed(lm, st, ids)
        assert st.info["evicted"] > 0
        if chunked:
            out.append(m.feed(lm, st, more, keep=0))
        else:
            out.append(torch.cat([m.feed(lm, st, [t]) for t in more]))
    assert out[0].shape == out[1].shape == (len(more), out[0].shape[-1])
    assert torch.allclose(out[0], out[1], atol=1e-4), (out[0] - out[1]).abs().max()


def test_teacher_forcing_under_eager_matches_sdpa(eager_lm, sdpa_lm, q):
    """Teacher forcing (the fidelity measure) on evict-cake: the same log-probs under both."""
    m = make_method("evict-cake", **ROWS["evict-cake"])
    ref = m.run(sdpa_lm, q, 5).token_ids
    a = m.teacher_forced_logprobs(eager_lm, q, ref)
    b = m.teacher_forced_logprobs(sdpa_lm, q, ref)
    assert torch.allclose(a, b, atol=1e-5)


def test_untested_attention_implementation_is_refused(tokenizer, q):
    lm = tiny_llama(tokenizer, seed=5, layers=2)
    lm.model.config._attn_implementation = "flex_attention"
    for name in ROWS:
        m = make_method(name, **ROWS[name])
        with pytest.raises(InputError, match="flex_attention.*sdpa"):
            m.new_state(lm, q, m.render_prompt(lm, q))
