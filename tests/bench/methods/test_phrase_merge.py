"""Phrase merge: merges learned greedily and applied in order (round trip exact), new rows are
the mean of their parts (input, output, tied), bits per byte and tokens saved are reported, and
the model and tokenizer are restored exactly."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs

from engine.errors import InputError
from engine.bench.methods import make_method
from engine.bench.methods.base import Query
from engine.lm.templates import encode_user_text
from engine.bench.methods.phrase_merge import PhraseVocab, _count_nonoverlapping, learn_phrases
from engine.lm.tiny import tiny_llama

CAL = ("The cat sat on the mat. The cat sat on the mat again. "
       "In the morning the cat sat on the mat, and in the evening the dog sat by the door. ") * 3


@pytest.fixture(scope="module")
def tied_lm(tokenizer):
    return tiny_llama(tokenizer, seed=2, tied=True)


def test_learn_picks_the_biggest_saving(tokenizer):
    v = learn_phrases(tokenizer, CAL, len(tokenizer), max_phrases=3, min_count=2)
    assert len(v.merges) == 3
    ids = encode_user_text(tokenizer, CAL)
    best = max((n - 1) * _scan(ids, tuple(ids[i:i + n]))
               for n in range(2, 5) for i in range(len(ids) - n + 1)
               if "\n" not in tokenizer.decode(ids[i:i + n]))
    first = v.merges[0]
    assert (len(first) - 1) * _scan(ids, first) == best
    assert tokenizer.decode(list(first)) == " sat on the mat"
    assert len(v.encode_ids(ids)) < 0.75 * len(ids)


@settings(max_examples=60, deadline=None)
@given(hs.lists(hs.integers(0, 5), max_size=40),
       hs.lists(hs.lists(hs.integers(0, 8), min_size=2, max_size=4), max_size=4))
def test_encode_expand_round_trip(seq, merges):
    v = PhraseVocab(base_size=6)
    for k, g in enumerate(merges):  # nested merges may refer to earlier new ids (6, 7, ...)
        v.merges.append(tuple(min(t, 5 + k) for t in g))
    enc = v.encode_ids(seq)
    assert v.expand(enc) == seq
    assert len(enc) <= len(seq)


def _scan(seq, gram):
    """Non-overlapping left-to-right occurrences of ``gram`` (brute force)."""
    i = k = 0
    n = len(gram)
    while i <= len(seq) - n:
        if tuple(seq[i:i + n]) == gram:
            k += 1
            i += n
        else:
            i += 1
    return k


@settings(max_examples=60, deadline=None)
@given(hs.lists(hs.integers(0, 3), max_size=30), hs.integers(2, 4))
def test_nonoverlapping_count_brute_force(seq, n):
    got = _count_nonoverlapping(seq, n, set())
    assert set(got) == {tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)}
    for gram, c in got.items():
        assert c == _scan(seq, gram)


@pytest.mark.parametrize("tied", [False, True])
def test_new_rows_are_part_means_and_restore_is_exact(tiny_lm, tied_lm, tokenizer, tied):
    lm = tied_lm if tied else tiny_lm
    emb0, head0 = lm.model.get_input_embeddings(), lm.model.get_output_embeddings()
    assert (head0.weight is emb0.weight) is tied
    probe = encode_user_text(tokenizer, "The cat sat on the mat.")
    fwd = make_method("baseline").forward(lm)
    before = fwd.logits(torch.tensor([probe]), fwd.new_cache(), keep=0)[0]
    n_tok = len(tokenizer)
    m = make_method("phrase-merge", calibration=CAL, max_phrases=5)
    m.prepare(lm)
    try:
        v = m.vocab
        V = v.base_size
        new = v.new_id(0)
        parts = v.parts(new)
        want_in = emb0.weight[parts].mean(0)
        got_in = lm.model.get_input_embeddings()(torch.tensor([[new]]))[0, 0]
        assert torch.allclose(got_in, want_in, atol=1e-6)
        h = torch.randn(1, emb0.weight.shape[1])
        logits = lm.model.get_output_embeddings()(h)
        assert logits.shape[-1] == V + len(v.merges)
        assert torch.allclose(logits[0, :V], head0(h)[0], atol=1e-5)
        assert torch.allclose(logits[0, new], h[0] @ head0.weight[parts].mean(0), atol=1e-4)
        if tied:
            assert lm.model.get_output_embeddings().extra is lm.model.get_input_embeddings().extra
        enc = m.encode(lm, "The cat sat on the mat.")
        assert len(enc) < len(probe)
        assert m.decode(lm, enc) == "The cat sat on the mat."
    finally:
        m.restore(lm)
    assert lm.model.get_input_embeddings() is emb0 and lm.model.get_output_embeddings() is head0
    assert len(tokenizer) == n_tok and encode_user_text(tokenizer, "The cat sat on the mat.") == probe
    after = fwd.logits(torch.tensor([probe]), fwd.new_cache(), keep=0)[0]
    assert torch.equal(after, before)


def test_bits_per_byte_and_run_figures(tiny_lm, tokenizer):
    m = make_method("phrase-merge", calibration=CAL, max_phrases=8)
    text = "In the evening the cat sat on the mat, and the dog sat by the door."
    res = m.nll_bits_per_byte(tiny_lm, text)  # unprepared: applies and removes itself
    base = make_method("baseline").nll_bits_per_byte(tiny_lm, text)
    assert res["tokens_merged"] < res["tokens_original"] and res["tokens_saved_pct"] > 10
    assert res["bytes"] == base["bytes"] and res["bpb"] > 0 and res["bpb"] != base["bpb"]
    q = Query(id="c", kind="chat", prompt="The cat sat on the mat. Where did the cat sit?")
    out = m.run(tiny_lm, q, 5)
    c = out.cost
    assert c["prompt_tokens_effective"] < c["prompt_tokens_in"]
    assert out.extra["tokens_saved"] == c["prompt_tokens_in"] - c["prompt_tokens_effective"]
    assert out.text == m.decode(tiny_lm, out.token_ids)
    lp = m.teacher_forced_logprobs(tiny_lm, q, [10, 11, 12])
    assert lp.shape == (3, len(tokenizer)) and bool((lp.exp().sum(-1) <= 1 + 1e-5).all())
    assert isinstance(tiny_lm.model.get_input_embeddings(), torch.nn.Embedding)


@pytest.mark.parametrize("kw", [dict(max_phrases=0), dict(min_count=1), dict(max_n=1),
                                dict(calibration="  ")])
def test_bad_params(kw):
    with pytest.raises(InputError):
        make_method("phrase-merge", **kw)
