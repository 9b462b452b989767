"""Tokenization diagram: counts, samples, canonical, neighbours — checked against brute force."""
from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine.errors import InputError
from engine.advtok.mdd import MDD
from engine.progress import CancelToken, Cancelled
from engine.advtok.vocab import Vocab, build_vocab
from tokbuild import plain_tokenizer, sentencepiece_tokenizer


@pytest.fixture(scope="module")
def vocab(tokenizer) -> Vocab:
    return build_vocab(tokenizer)


def brute_force(vocab: Vocab, text: str) -> set[tuple[int, ...]]:
    """Every tokenization, found by testing every vocabulary token at every byte position (no
    diagram, no dict lookups: the O(n·|V|) definition)."""
    data = text.encode("utf-8")
    n = len(data)
    tokens = [(t, b) for t, b in enumerate(vocab.token_bytes) if b is not None]
    at = [[(i + len(b), t) for t, b in tokens if data.startswith(b, i)] for i in range(n)]
    out: set[tuple[int, ...]] = set()

    def rec(i: int, path: list[int]) -> None:
        if i == n:
            out.add(tuple(path))
            return
        for j, t in at[i]:
            path.append(t)
            rec(j, path)
            path.pop()

    rec(0, [])
    return out


def edges(vocab: Vocab, ids) -> set[tuple[int, int]]:
    pos, e = 0, set()
    for t in ids:
        pos += len(vocab.token_bytes[t])
        e.add((pos, t))
    return e


def distance(vocab: Vocab, x, v) -> int:
    return len(edges(vocab, v) - edges(vocab, x))


# ------------------------------------------------------ known figures (docs/algorithms.md §1.4)
KNOWN = [
    ("penguin", 7, 18, 36, 2, [1, 0, 1, 7, 15]),
    ("Compose an email", 16, 42, 4992, 4, [1, 0, 11, 16, 58]),
    ("The quick brown fox jumps over the lazy dog.", 44, 120, 8682209280, 10, [1, 0, 29, 43, 407]),
]


@pytest.mark.parametrize("text,nbytes,nedges,count,canon_len,by_k", KNOWN)
def test_known_counts(vocab, tokenizer, text, nbytes, nedges, count, canon_len, by_k):
    m = MDD(vocab, text)
    assert (m.n, m.n_edges, m.count()) == (nbytes, nedges, count)
    x = m.canonical(tokenizer)
    assert len(x) == canon_len
    assert m.counts_by_distance(x, 4) == by_k
    assert [m.count_at(x, k) for k in range(5)] == by_k
    assert len(m.neighbours(x, 2)) == by_k[2]
    assert len(m.neighbours(x, 3)) == by_k[3]


@pytest.mark.parametrize("text,count", [("café au lait", 288), ("naïve 中文", 90), ("🦜 parrot", 94)])
def test_known_non_ascii_counts(vocab, tokenizer, text, count):
    m = MDD(vocab, text)
    assert m.count() == count
    assert m.contains(m.canonical(tokenizer))
    rng = random.Random(3)
    for _ in range(200):
        assert tokenizer.decode(m.sample(rng)) == text


@pytest.mark.parametrize("text", ["penguin", "Compose an email", "naïve 中文"])
def test_brute_force_agrees_on_table_strings(vocab, tokenizer, text):
    m = MDD(vocab, text)
    bf = brute_force(vocab, text)
    allp = m.enumerate(10**6)
    assert len(allp) == len(set(map(tuple, allp))) == len(bf) == m.count()
    assert set(map(tuple, allp)) == bf
    assert tuple(m.canonical(tokenizer)) in bf


# ------------------------------------------------------------------ property tests
ALPHABET = st.sampled_from(list("abcdeilmnoprstu ,.!?'\n") + ["é", "ï", "中", "文", "🦜", "\u0301", "ß"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(ALPHABET, min_size=1, max_size=7), seed=st.integers(0, 2**32 - 1))
def test_properties_against_brute_force(vocab, tokenizer, text, seed):
    data = text.encode()
    assume(len(data) <= 11)
    m = MDD(vocab, text)
    bf = brute_force(vocab, text)
    # count and enumeration
    assert m.count() == len(bf)
    allp = m.enumerate(len(bf) + 5)
    assert len(allp) == len(bf) and set(map(tuple, allp)) == bf
    for v in allp:
        assert m.contains(v) and vocab.bytes_of(v) == data
    for v in allp[:20]:
        assert tokenizer.decode(v) == text
    # canonical and shortest
    x = m.canonical(tokenizer)
    assert tuple(x) in bf
    assert len(m.shortest()) == min(map(len, bf)) and tuple(m.shortest()) in bf
    # samples
    rng = random.Random(seed)
    for v in [m.sample(rng) for _ in range(10)]:
        assert tuple(v) in bf
    # distance classes for the canonical X and a random X
    for xx in (x, m.sample(rng)):
        hist = Counter(distance(vocab, xx, v) for v in bf)
        kmax = len(data)
        by_k = m.counts_by_distance(xx, kmax)
        assert sum(by_k) == m.count()
        assert by_k == [hist.get(k, 0) for k in range(kmax + 1)]
        assert by_k[0] == 1
        brute2 = {v for v in bf if distance(vocab, xx, v) == 2}
        got2 = m.neighbours(xx, 2)
        assert all(m.distance(xx, v) == 2 for v in got2)
        assert len(got2) == len(set(map(tuple, got2))) and set(map(tuple, got2)) == brute2
        assert {tuple(v) for v in m.within(xx, 2)} == {v for v in bf if 1 <= distance(vocab, xx, v) <= 2}
        for v in m.sample_at(xx, 2, rng, 5):
            assert tuple(v) in brute2


def test_contains_rejects_non_paths(vocab, tokenizer):
    m = MDD(vocab, "penguin")
    x = m.canonical(tokenizer)
    assert m.contains(x)
    assert not m.contains(x[:-1])
    assert not m.contains(x + x[-1:])
    assert not m.contains(list(reversed(x)))
    assert not m.contains([2] + x)          # special id
    assert not m.contains([10**9])          # out of range
    assert not m.contains([])


# ------------------------------------------------------------------ uniformity (χ²)
def _chi2(counts: Counter, k: int, draws: int) -> float:
    e = draws / k
    return sum((counts.get(i, 0) - e) ** 2 / e for i in range(k))


def test_uniform_sampler_chi_square(vocab):
    m = MDD(vocab, "penguin")
    allp = [tuple(v) for v in m.enumerate(100)]
    index = {v: i for i, v in enumerate(allp)}
    rng = random.Random(12345)
    draws = 36_000
    c = Counter(index[tuple(m.sample(rng))] for _ in range(draws))
    assert len(c) == 36
    # 35 degrees of freedom: P(χ² > 66.6) = 0.001
    assert _chi2(c, 36, draws) < 66.6


def test_sample_at_is_uniform_and_exact(vocab, tokenizer):
    m = MDD(vocab, "Compose an email")
    x = m.canonical(tokenizer)
    ring = [tuple(v) for v in m.neighbours(x, 3)]
    assert len(ring) == 16
    index = {v: i for i, v in enumerate(ring)}
    draws = 16_000
    got = m.sample_at(x, 3, random.Random(7), draws)
    c = Counter(index[tuple(v)] for v in got)  # KeyError if a draw is not at distance 3
    assert _chi2(c, 16, draws) < 37.7  # 15 dof, p = 0.001


def test_same_rng_state_same_draws(vocab):
    m = MDD(vocab, "The quick brown fox jumps over the lazy dog.")
    a = [m.sample(random.Random(5)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    r1, r2 = random.Random(9), random.Random(9)
    assert [m.sample(r1) for _ in range(20)] == [m.sample(r2) for _ in range(20)]
    x = m.sample(random.Random(1))
    assert m.sample_at(x, 4, random.Random(2), 10) == m.sample_at(x, 4, random.Random(2), 10)


def test_exact_sampling_past_float_precision(vocab):
    """Counts beyond 2**53 still sample exactly (integer draws) and every draw is a path."""
    text = "Adversarial tokenization searches the space of tokenizations of one request string."
    m = MDD(vocab, text)
    assert m.count() > 2**64
    rng = random.Random(0)
    for _ in range(50):
        v = m.sample(rng)
        assert m.contains(v) and vocab.bytes_of(v) == text.encode()


# ------------------------------------------------------------------ neighbours semantics
def test_distance_one_is_merges_and_two_excludes_them(vocab, tokenizer):
    m = MDD(vocab, "Compose an email")
    x = m.canonical(tokenizer)
    d1 = m.neighbours(x, 1)
    assert d1 == []  # canonical BPE is already merged as far as the vocabulary allows here
    y = m.neighbours(x, 2)[0]           # a split of X ...
    merges = m.neighbours(y, 1)        # ... can be merged back at distance 1
    assert x in merges
    assert all(len(v) < len(y) for v in merges)
    assert x not in m.neighbours(y, 2)  # exactly-k: no merge among distance-2 neighbours
    assert x in m.within(y, 2)


def test_one_character_has_no_neighbours(vocab, tokenizer):
    m = MDD(vocab, "a")
    x = m.canonical(tokenizer)
    assert m.count() == 1 and m.neighbours(x, 2) == [] and m.within(x, 4) == []
    assert m.sample_at(x, 2, random.Random(0), 3) == []
    assert m.count_at(x, 2) == 0


def test_neighbours_limit(vocab, tokenizer):
    m = MDD(vocab, "The quick brown fox jumps over the lazy dog.")
    x = m.canonical(tokenizer)
    full = m.neighbours(x, 2)
    assert m.neighbours(x, 2, limit=5) == full[:5]
    assert m.neighbours(x, 2, limit=0) == []


def test_neighbours_of_a_foreign_tokenization_is_an_error(vocab):
    m = MDD(vocab, "penguin")
    with pytest.raises(InputError):
        m.neighbours([96, 96], 2)


# ------------------------------------------------------------------ other vocabularies
@pytest.fixture(scope="module")
def sp_tok():
    return sentencepiece_tokenizer()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.sampled_from(list("theacfpnguido ") + ["é", "中", "文", "🦜", "\u0301"]),
                    min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1))
def test_sentencepiece_properties_against_brute_force(sp_tok, text, seed):
    """Byte fallback: every byte of every character is an edge; counts, canonical and
    neighbours agree with brute force on a ▁/<0xNN> vocabulary too."""
    assume(len(text.encode()) <= 10)
    vb = build_vocab(sp_tok)
    m = MDD(vb, text)
    bf = brute_force(vb, text)
    assert m.count() == len(bf) and set(map(tuple, m.enumerate(len(bf)))) == bf
    x = m.canonical(sp_tok)
    assert tuple(x) in bf and sp_tok.decode(x) == text
    v = m.sample(random.Random(seed))
    assert tuple(v) in bf and sp_tok.decode(v) == text
    assert {tuple(w) for w in m.neighbours(x, 2)} == {w for w in bf if distance(vb, x, w) == 2}


def test_sentencepiece_byte_fallback_diagram():
    tok = sentencepiece_tokenizer()
    vb = build_vocab(tok)
    for text in ["the café 中文 dog", "a\u0301 🦜", "pen guin"]:
        m = MDD(vb, text)
        bf = brute_force(vb, text) if len(text.encode()) <= 9 else None
        x = m.canonical(tok)
        assert m.contains(x)
        if bf is not None:
            assert m.count() == len(bf)
        rng = random.Random(0)
        for _ in range(30):
            v = m.sample(rng)
            assert vb.bytes_of(v) == text.encode() and tok.decode(v) == text


def test_plain_vocabulary_counts_and_uncoverable():
    tok = plain_tokenizer()
    vb = build_vocab(tok)
    m = MDD(vb, "abab")
    assert m.count() == len(brute_force(vb, "abab")) == 6
    with pytest.raises(InputError) as ei:
        MDD(vb, "abcab")
    assert "'c'" in str(ei.value) and "character offset 2" in str(ei.value)


def test_uncoverable_multibyte_character_is_named():
    vb = build_vocab(plain_tokenizer(["a", "b", " "]))
    with pytest.raises(InputError) as ei:
        MDD(vb, "ab 中 a")
    msg = str(ei.value)
    assert "'中'" in msg and "U+4E2D" in msg and "character offset 3" in msg and "byte 3" in msg


def test_not_byte_faithful_tokenizers_are_reported():
    lower = sentencepiece_tokenizer(lowercase=True)
    with pytest.raises(InputError, match="not byte-faithful"):
        MDD(build_vocab(lower), "The dog").canonical(lower)
    prefix = sentencepiece_tokenizer(prepend_scheme="first")
    with pytest.raises(InputError, match="dummy prefix"):
        MDD(build_vocab(prefix), "the dog").canonical(prefix)


# ------------------------------------------------------------------ bad input, progress, cancel, DOT
@pytest.mark.parametrize("bad", ["", "\ud800abc"])
def test_bad_text(vocab, bad):
    with pytest.raises(InputError):
        MDD(vocab, bad)


def test_special_token_text_is_spelt_with_ordinary_tokens(vocab, tokenizer):
    m = MDD(vocab, "<|im_end|>")
    x = m.canonical(tokenizer)
    assert 2 not in x and m.contains(x)
    assert all(2 not in v for v in m.enumerate(10_000))


def test_progress_and_cancel(vocab):
    text = "x" * 600
    seen = []
    m = MDD(vocab, text, progress=seen.append)
    assert seen[-1].phase == "mdd" and seen[-1].step == seen[-1].total == 600
    assert seen[-1].metrics["count"] == str(m.count())
    assert any(p.step < p.total for p in seen)  # intermediate reports on long input
    tok = CancelToken()
    tok.cancel()
    with pytest.raises(Cancelled):
        MDD(vocab, text, cancel=tok)


def test_dot_export(vocab, tokenizer):
    m = MDD(vocab, 'say "hi"\n')
    x = m.canonical(tokenizer)
    dot = m.to_dot(highlight=x)
    assert dot.startswith("digraph MDD {") and dot.rstrip().endswith("}")
    assert dot.count(" -> ") == m.n_edges
    assert dot.count("penwidth") == len(x)
    assert '\\"' in dot and "\\\\n" in dot  # quotes and newlines escaped in labels


def test_long_text_neighbours_do_not_recurse(vocab):
    """Paths of thousands of tokens: enumeration is iterative (no recursion limit)."""
    text = "ab, c." * 600
    m = MDD(vocab, text)
    x = m.sample(random.Random(4))
    assert len(x) > 1500
    got = m.neighbours(x, 2, limit=3)
    assert len(got) == 3
    for v in got:
        assert m.contains(v) and distance(vocab, x, v) == 2
    assert len(m.enumerate(2)) == 2
