"""Prompt pruning: exact every-Nth dropping, the negation/number guard (property-tested), word
self-information against a brute-force token-by-token scoring, lowest-surprisal selection, and
real prompt-token reductions with the compressor time charged."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs

from engine.errors import InputError
from engine.bench.methods import make_method
from engine.bench.methods.base import Query
from engine.bench.methods.prompt_prune import (PruneSelfInfo, is_protected, prune_by_surprisal,
                                         prune_every_nth, split_words, word_surprisal)

WORDS = ["the", "cat", "did", "not", "sit", "on", "42", "mats", "never", "twice", "Paris", "a",
         "don't", "3.5%", "bright", "No.", "tree", "seven"]


def test_every_nth_exact():
    text = "a b c d e f g h i"
    assert prune_every_nth(text, 3)[0] == "a b d e g h"
    assert prune_every_nth("one two three four five six seven eight", 2, protect=False)[0] == \
        "one three five seven"
    # the guard keeps numbers and negations even at a dropped slot
    assert prune_every_nth("we did not go and ran 5 km home", 3)[0] == "we did not go and 5 km"
    assert prune_every_nth("we did not go and ran 5 km home", 3, protect=False)[0] == "we did go and 5 km"


def test_rebuild_keeps_line_structure():
    text = "Title line\n\nfirst para word\nsecond line here"
    out, figs = prune_every_nth(text, 2, protect=False)
    assert out == "Title\n\nfirst word\nline"
    assert figs["words_in"] == 8 and figs["words_kept"] == 4


@pytest.mark.parametrize("w,prot", [("not", True), ("Never,", True), ("can't", True),
                                    ("doesn’t", True), ("1999", True), ("3.5%", True),
                                    ("twelve", True), ("cat", False), ("Paris.", False)])
def test_is_protected(w, prot):
    assert is_protected(w) is prot


@settings(max_examples=80, deadline=None)
@given(hs.lists(hs.sampled_from(WORDS), min_size=1, max_size=40), hs.integers(2, 6),
       hs.floats(0.05, 0.95), hs.randoms(use_true_random=False))
def test_guard_never_drops_negations_or_numbers(words, n, ratio, rnd):
    text = " ".join(words)
    protected = [w for w in words if is_protected(w)]
    a, _ = prune_every_nth(text, n)
    sur = [rnd.random() for _ in words]
    b, figs = prune_by_surprisal(text, sur, ratio)
    for out in (a, b):
        kept = out.split()
        assert [w for w in kept if is_protected(w)] == protected
    assert figs["words_in"] - figs["words_kept"] == min(round(ratio * len(words)),
                                                        len(words) - len(protected))


def test_prune_by_surprisal_drops_the_lowest():
    text = "alpha beta gamma delta epsilon zeta"
    out, _ = prune_by_surprisal(text, [5.0, 0.1, 3.0, 0.2, 9.0, 1.0], 0.5)
    assert out == "alpha gamma epsilon"


def test_word_surprisal_matches_brute_force(tiny_lm, tokenizer):
    text = "The bridge was not  finished in 1887;\nits engineer, Ada Brook, resigned."
    m = PruneSelfInfo()
    fwd = m.forward(tiny_lm)
    got = word_surprisal(tiny_lm, fwd, text)
    ids = tokenizer.encode(text, add_special_tokens=False)
    tok_sur = [math.inf]
    for i in range(1, len(ids)):  # brute force: one fresh forward per prefix
        lg = fwd.logits(torch.tensor([ids[:i]]), fwd.new_cache())[0, -1]
        tok_sur.append(float(-torch.log_softmax(lg, -1)[ids[i]]))
    assert len(got) == len(split_words(text))
    assert math.isinf(got[0]) and all(math.isfinite(v) and v > 0 for v in got[1:])
    assert sum(got[1:]) == pytest.approx(sum(tok_sur[1:]) - _first_word_tail(tokenizer, text, tok_sur),
                                         rel=1e-4)


def _first_word_tail(tokenizer, text, tok_sur):
    """Surprisal of the first word's later tokens (they belong to the first, infinite word)."""
    first = split_words(text)[0]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return sum(v for (a, b), v in zip(enc["offset_mapping"], tok_sur)
               if a < first.end and math.isfinite(v))


@pytest.mark.parametrize("name,params", [("prune-nth", {"n": 4}), ("prune-selfinfo", {"ratio": 0.25})])
def test_run_reduces_prompt_tokens(tiny_lm, sample_text, name, params):
    doc = sample_text[:900] + " It was not 17 minutes."
    q = Query(id="doc", kind="qa", prompt="How long did it take?", document=doc)
    m = make_method(name, **params)
    out = m.run(tiny_lm, q, 4)
    base = make_method("baseline").run(tiny_lm, q, 4)
    c = out.cost
    assert c["prompt_tokens_in"] == base.cost["prompt_tokens_in"]
    assert c["prompt_tokens_effective"] < 0.88 * c["prompt_tokens_in"]
    assert out.extra["words_kept"] < out.extra["words_in"]
    assert out.extra["protected_kept"] == out.extra["protected"]
    fed = tiny_lm.tokenizer.decode(m.render_prompt(tiny_lm, q))
    assert "not 17" in fed
    if name == "prune-selfinfo":
        assert c["aux_s"] > 0


def test_no_document_is_unchanged(tiny_lm):
    q = Query(id="c", kind="chat", prompt="Say hello.")
    a = make_method("prune-selfinfo").render_prompt(tiny_lm, q)
    assert a == make_method("baseline").render_prompt(tiny_lm, q)


@pytest.mark.parametrize("name,kw", [("prune-nth", {"n": 1}), ("prune-selfinfo", {"ratio": 1.0}),
                                     ("prune-selfinfo", {"ratio": 0})])
def test_bad_params(name, kw):
    with pytest.raises(InputError):
        make_method(name, **kw)
