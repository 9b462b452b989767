"""AdvTok search on the tiny model: never below canonical, monotone best, exact fixed-point stop,
cancel mid-search, seeding, side-by-side samples and bad input (docs/algorithms.md §2.2, §4
items 5, 9)."""
from __future__ import annotations

import copy

import pytest

from engine.advtok.neighbours import levenshtein
from engine.advtok.samples import sample_responses
from engine.advtok.search import AttackConfig, run_attack
from engine.advtok.score import CandidateScorer
from engine.errors import ContextOverflow, InputError
from engine.lm.generate import generate_batch
from engine.advtok.mdd import MDD
from engine.lm.model import from_parts
from engine.progress import CancelToken
from engine.lm.config import SamplingConfig
from engine.lm.templates import split_template
from engine.advtok.vocab import load_vocab

REQUEST = "Compose an email"
RESPONSE = "Sure, here it is."


@pytest.fixture(scope="module")
def vocab(tiny_lm):
    return load_vocab(tiny_lm.tokenizer)


def _mdd(vocab, text=REQUEST):
    return MDD(vocab, text)


def cfg(**kw):
    base = dict(request=REQUEST, response=RESPONSE, iters=30, samples=0)
    base.update(kw)
    return AttackConfig(**base)


@pytest.fixture(scope="module")
def greedy_run(tiny_lm, vocab):
    events = []
    res = run_attack(tiny_lm, cfg(), progress=events.append, vocab=vocab)
    return res, events


def test_search_never_below_canonical_and_best_monotone(greedy_run, vocab):
    res, _ = greedy_run
    assert res.best_score >= res.canonical_score
    assert all(b >= a for a, b in zip(res.curve, res.curve[1:]))
    assert res.curve[0] >= res.canonical_score
    assert _mdd(vocab).contains(res.best_ids)
    assert res.best_tokens and "".join(res.best_tokens) == REQUEST
    assert res.levenshtein == levenshtein(res.best_ids, res.canonical_ids)


def test_full_neighbourhood_stops_at_a_fixed_point(tiny_lm, greedy_run, vocab):
    res, _ = greedy_run
    assert res.stop_reason == "local_optimum" and res.iterations < 30
    # restarting at the optimum: argmax over neighbours(X, 2) ∪ {X} is X, one iteration
    again = run_attack(tiny_lm, cfg(init="given", given_ids=res.best_ids), vocab=vocab)
    assert again.stop_reason == "local_optimum" and again.iterations == 1
    assert again.best_ids == res.best_ids
    # and by brute force: no distance-2 neighbour scores higher (same scorer, memo shared)
    ch = split_template(tiny_lm.tokenizer, cfg().system)
    sc = CandidateScorer(tiny_lm, ch.prefix_ids, [], ch.tail_ids + ch.response_ids(RESPONSE))
    x = res.best_ids
    scores = sc.score([x] + _mdd(vocab).neighbours(x, 2))
    assert max(scores) == scores[0]


def test_progress_reports_every_iteration(greedy_run):
    res, events = greedy_run
    phases = {e.phase for e in events}
    assert {"vocab", "mdd", "search"} <= phases
    its = [e for e in events if e.phase == "search" and "kept" in e.metrics]
    assert len(its) == res.iterations
    m = its[-1].metrics
    for key in ("best", "candidates", "edge_distance", "levenshtein", "cand_s", "memo_hits"):
        assert key in m
    assert any(e.phase == "mdd" and e.metrics.get("count") == res.count for e in events)


def test_random_init_subsampled_is_seeded_and_valid(tiny_lm, vocab):
    a = run_attack(tiny_lm, cfg(init="random", max_neighbours=5, iters=3, seed=7), vocab=vocab)
    b = run_attack(tiny_lm, cfg(init="random", max_neighbours=5, iters=3, seed=7), vocab=vocab)
    assert a.init_ids == b.init_ids and a.best_ids == b.best_ids and a.curve == b.curve
    m = _mdd(vocab)
    assert m.contains(a.init_ids) and m.contains(a.best_ids)
    assert a.best_score >= max(a.canonical_score, a.curve[0] - 1e9)
    assert all(t.kept <= 5 for t in a.trace)
    assert a.stop_reason in ("no_improvement", "iterations")


def test_distance4_merges_and_stochastic_modes(tiny_lm, vocab):
    m = _mdd(vocab)
    r = run_attack(tiny_lm, cfg(distance4=True, include_merges=True, max_neighbours=12, iters=2,
                                stochastic=True, temperature=0.5), vocab=vocab)
    assert m.contains(r.best_ids) and r.best_score >= r.canonical_score
    assert r.trace[0].kept <= 12


def test_cancel_mid_search_returns_valid_tokenization(tiny_lm, vocab):
    token = CancelToken()
    after_cancel = []

    def progress(p):
        if token.cancelled:
            after_cancel.append(p)
        elif p.phase == "search" and p.metrics.get("iteration") == 2 and "batch" in p.metrics:
            token.cancel()

    res = run_attack(tiny_lm, cfg(batch_cap=2), progress=progress, cancel=token, vocab=vocab)
    assert res.stop_reason == "cancelled"
    assert res.iterations == 1
    # lands within one batch: no further batch was scored after the cancel
    assert not [p for p in after_cancel if "batch" in p.metrics]
    assert _mdd(vocab).contains(res.best_ids)
    assert res.best_score is not None and res.best_score >= res.canonical_score


def test_cancel_before_start_is_well_formed(tiny_lm, vocab):
    token = CancelToken()
    token.cancel()
    res = run_attack(tiny_lm, cfg(samples=2), cancel=token, vocab=vocab)
    assert res.stop_reason == "cancelled" and res.iterations == 0
    assert res.best_ids == res.canonical_ids and res.canonical_tokens
    assert res.adversarial_samples == [] and res.to_dict()["improvement"] is None


def test_samples_side_by_side_same_template(tiny_lm, vocab):
    r = run_attack(tiny_lm, cfg(iters=1, samples=2, sample_max_new_tokens=4,
                                sample_temperature=0.0), vocab=vocab)
    assert len(r.adversarial_samples) == 2 and len(r.canonical_samples) == 2
    # the canonical side is exactly what the uncached prompt SP ⊕ H ⊕ canonical ⊕ U generates
    ch = split_template(tiny_lm.tokenizer, cfg().system)
    direct = generate_batch(tiny_lm, ch.prompt_ids(r.canonical_ids), 1,
                            SamplingConfig(max_new_tokens=4, temperature=0.0, seed=0))
    assert r.canonical_samples[0]["token_ids"] == direct[0].token_ids
    adv = sample_responses(tiny_lm, ch, r.best_ids, 1, max_new_tokens=4, temperature=0.0)
    assert r.adversarial_samples[0]["token_ids"] == adv[0].token_ids


@pytest.mark.parametrize("kw, words", [
    (dict(request=""), "request is empty"),
    (dict(request="   "), "request is empty"),
    (dict(response=""), "response is empty"),
    (dict(request="x" * 30, max_request_chars=20), "over the cap"),
    (dict(iters=0), "iterations"),
    (dict(iters=-3), "iterations"),
    (dict(init="greedy"), "init"),
    (dict(init="given"), "given"),
    (dict(max_neighbours=0), "max neighbours"),
    (dict(samples=-1), "samples"),
    (dict(temperature=0.0), "temperature"),
    (dict(batch_cap=0), "batch cap"),
])
def test_bad_settings(tiny_lm, kw, words):
    with pytest.raises(InputError, match=words):
        run_attack(tiny_lm, cfg(**kw))


def _samples(r):
    return [(s["token_ids"], s["text"]) for s in r.adversarial_samples + r.canonical_samples]


def test_sample_batches_are_sized_from_memory(tiny_lm, vocab, monkeypatch):
    """The samples of a side decode in one batch when half the available memory holds them
    (engine.budget: a row's KV and logits row), else in as many rows as it holds, the rest in
    further batches; each sample records its batch's rows, and a replay with them draws the same
    samples on a roomy machine. A machine that cannot hold one row is refused before the
    search starts."""
    import engine.lm.generate as gen
    from engine.advtok.replay import replay_record
    from engine.budget import batch_bound

    sizes = []
    real = gen.generate_batch

    def spy(lm, prompt, n, c, **kw):
        sizes.append(n)
        return real(lm, prompt, n, c, **kw)
    monkeypatch.setattr(gen, "generate_batch", spy)
    roomy = run_attack(tiny_lm, cfg(samples=5, iters=1), vocab=vocab)
    assert sizes == [5, 5] and {s["batch_rows"] for s in roomy.adversarial_samples} == {5}
    sizes.clear()
    row = batch_bound(tiny_lm, "samples", 60).per_unit
    monkeypatch.setenv("TOKENFORGE_MEMORY_BYTES", str(5 * row))   # half of it: 2.5 rows
    tight = run_attack(tiny_lm, cfg(samples=5, iters=1), vocab=vocab)
    assert sizes == [2, 2, 1, 2, 2, 1] and len(_samples(tight)) == 10
    assert [s["batch_rows"] for s in tight.canonical_samples] == [2, 2, 2, 2, 1]
    monkeypatch.delenv("TOKENFORGE_MEMORY_BYTES")
    again = replay_record(tiny_lm, tight.to_dict())
    assert all(again.samples_match["adversarial"]) and all(again.samples_match["canonical"])
    monkeypatch.setenv("TOKENFORGE_MEMORY_BYTES", str(row // 2))
    seen = []
    with pytest.raises(InputError, match=r"samples 1 needs about .* the limit is samples ≤ 0"):
        run_attack(tiny_lm, cfg(samples=5), progress=seen.append)
    assert not [p for p in seen if p.phase == "search"]


def test_a_sample_batch_out_of_memory_is_halved_and_loses_none(tiny_lm, vocab, monkeypatch):
    """An out-of-memory batch is retried at half its rows: every sample is there, each as a
    batch of that size decodes it."""
    import torch

    import engine.lm.generate as gen
    from engine.advtok.replay import replay_record

    real, sizes = gen.generate_batch, []

    def small_memory(lm, prompt, n, c, **kw):
        sizes.append(n)
        if n > 2:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return real(lm, prompt, n, c, **kw)
    monkeypatch.setattr(gen, "generate_batch", small_memory)
    halved = run_attack(tiny_lm, cfg(samples=5, iters=1), vocab=vocab)
    assert sizes == [5, 2, 2, 1, 5, 2, 2, 1] and len(_samples(halved)) == 10
    monkeypatch.setattr(gen, "generate_batch", real)
    again = replay_record(tiny_lm, halved.to_dict())
    assert all(again.samples_match["adversarial"]) and all(again.samples_match["canonical"])


def test_given_ids_must_spell_the_request(tiny_lm, vocab):
    with pytest.raises(InputError, match="do not spell"):
        run_attack(tiny_lm, cfg(init="given", given_ids=[3750, 2594]), vocab=vocab)


def test_model_without_chat_template(tiny_lm, vocab):
    tok = copy.deepcopy(tiny_lm.tokenizer)
    tok.chat_template = None
    lm = from_parts(tiny_lm.model, tok, name="tiny-no-template")
    with pytest.raises(InputError, match="no chat template"):
        run_attack(lm, cfg())
    r = run_attack(lm, cfg(iters=1, allow_plain_template=True), vocab=vocab)
    assert r.warnings and _mdd(vocab, r.request_text).contains(r.best_ids)
    assert r.request_text.strip() == REQUEST


def test_prompt_over_context_length(tokenizer):
    from engine.lm.tiny import tiny_llama

    small = tiny_llama(tokenizer, max_positions=48)
    with pytest.raises(ContextOverflow):
        run_attack(small, cfg(request="Compose an email to my landlord about the heating"))


def test_levenshtein_brute():
    assert levenshtein([1, 2, 3], [1, 2, 3]) == 0
    assert levenshtein([1, 2, 3], [1, 3]) == 1
    assert levenshtein([], [4, 5]) == 2
    assert levenshtein([1, 2], [2, 1]) == 2
