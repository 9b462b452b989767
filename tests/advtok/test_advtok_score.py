"""The AdvTok candidate scorer: prefix-cached, batched, sliced-head scores must equal the plain
full-forward objective (docs/algorithms.md §2.1, §2.3, §4 item 4)."""
from __future__ import annotations

import math
import random

import pytest
import torch

from engine.advtok.search import DEFAULT_SYSTEM
from engine.advtok.score import CandidateScorer, forward_flops, reference_scores
from engine.errors import InputError
from engine.lm.forward import get_forward
from engine.advtok.mdd import MDD
from engine.lm.templates import split_template
from engine.advtok.vocab import load_vocab

ATOL = 1e-4
REQUEST = "Compose an email"
RESPONSE = "Sure, here it is."


@pytest.fixture(scope="module")
def parts(tiny_lm):
    tok = tiny_lm.tokenizer
    ch = split_template(tok, DEFAULT_SYSTEM)
    mdd = MDD(load_vocab(tok), ch.request_text(REQUEST))
    x = mdd.canonical(tok)
    rng = random.Random(1)
    cands = [x] + mdd.neighbours(x, 2) + [mdd.sample(rng) for _ in range(5)]
    targets = ch.tail_ids + ch.response_ids(RESPONSE)
    return ch, mdd, x, cands, targets


def _brute(lm, prefix, v, between, targets):
    """Score by hand: one unpadded, uncached HF forward of the whole row, no attention mask."""
    row = list(prefix) + list(v) + list(between) + list(targets)
    with torch.inference_mode():
        logits = lm.model(input_ids=torch.tensor([row])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    start = len(prefix) + len(v) + len(between)
    total = sum(float(lp[start + i - 1, t]) for i, t in enumerate(targets))
    return total - math.log(len(v) + len(prefix) + len(between) + len(targets))


def test_batched_equals_one_at_a_time_uncached(tiny_lm, parts):
    ch, _, _, cands, targets = parts
    sc = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets, batch_cap=6)
    got = sc.score(cands)
    ref = reference_scores(tiny_lm, ch.prefix_ids, cands, [], targets, batch_size=1)
    assert sc.stats.batches >= 2          # really batched
    assert max(abs(a - b) for a, b in zip(got, ref)) < ATOL
    # and the objective itself, by hand, for a few rows
    for v, s in list(zip(cands, got))[:3]:
        assert abs(s - _brute(tiny_lm, ch.prefix_ids, v, [], targets)) < ATOL


def test_frozen_suffix_is_fed_not_scored(tiny_lm, parts):
    ch, _, _, cands, targets = parts
    between = [28, 3510]   # F_suf: two ordinary tokens between V and U
    sc = CandidateScorer(tiny_lm, ch.prefix_ids, between, targets)
    got = sc.score(cands[:4])
    for v, s in zip(cands[:4], got):
        assert abs(s - _brute(tiny_lm, ch.prefix_ids, v, between, targets)) < ATOL


def test_independent_of_batch_composition(tiny_lm, parts):
    ch, _, _, cands, targets = parts
    one = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets, batch_cap=1).score(cands)
    whole = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets).score(cands)
    mixed_order = list(reversed(cands))
    mixed = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets, batch_cap=3).score(mixed_order)
    mixed = list(reversed(mixed))
    for a, b, c in zip(one, whole, mixed):
        assert abs(a - b) < ATOL and abs(a - c) < ATOL


def test_trunk_sharing_equals_plain_scores(tiny_lm, parts):
    """Candidates forked from X's cache at their first edit score as if fed in full."""
    ch, _, x, cands, targets = parts
    plain = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets, share_trunk=False).score(cands)
    for cap in (1, 3, 16):
        sc = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets, batch_cap=cap)
        got = sc.score(cands, trunk=x)
        if cap == 1:   # one row per batch: every row forks at its own first edit
            assert sc.stats.shared_tokens > 0 and sc.stats.trunk_tokens == len(x)
        assert max(abs(a - b) for a, b in zip(got, plain)) < ATOL
    # a frozen suffix and a trunk the candidates barely share still agree
    between = [28]
    other = cands[-1]
    a = CandidateScorer(tiny_lm, ch.prefix_ids, between, targets).score(cands, trunk=other)
    b = reference_scores(tiny_lm, ch.prefix_ids, cands, between, targets, batch_size=4)
    assert max(abs(p - q) for p, q in zip(a, b)) < ATOL


def test_shared_len_leaves_the_last_token():
    assert CandidateScorer.shared_len((1, 2, 3), (1, 2, 3)) == 2
    assert CandidateScorer.shared_len((1, 2, 3), (1, 5, 3)) == 1
    assert CandidateScorer.shared_len((1, 2, 3, 4), (1, 2)) == 2
    assert CandidateScorer.shared_len((7,), (7, 8)) == 0
    assert CandidateScorer.shared_len((1, 2), None) == 0


def test_memoised_equals_fresh_and_skips_work(tiny_lm, parts):
    ch, _, _, cands, targets = parts
    sc = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets, batch_cap=4)
    first = sc.score(cands)
    scored = sc.stats.scored
    again = sc.score(cands + cands[:2])
    assert again[:len(cands)] == first                 # bit-identical from the memo
    assert sc.stats.scored == scored                   # nothing forwarded again
    assert sc.stats.memo_hits >= len(cands) + 2
    fresh = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets, batch_cap=4).score(cands)
    assert fresh == first                              # same batches, same arithmetic


def test_prefix_cache_never_mutated(tiny_lm, parts):
    ch, _, _, cands, targets = parts
    sc = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets, batch_cap=4)
    fwd = get_forward(tiny_lm)
    pc = sc.prefix_cache
    probe = torch.tensor([[28, 3510, 314]])

    def after_prefix():
        return fwd.logits(probe, fwd.fork(pc), keep=0)

    before = after_prefix()
    sc.score(cands)
    assert fwd.cache_len(pc) == len(ch.prefix_ids)
    assert torch.equal(before, after_prefix())


def test_length_term_option(tiny_lm, parts):
    ch, _, x, _, targets = parts
    on = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets).score([x])[0]
    off = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets, length_norm=False).score([x])[0]
    assert off - on == pytest.approx(math.log(len(x) + len(ch.prefix_ids) + len(targets)), abs=1e-9)


def test_batch_size_from_budget_and_cap(tiny_lm, parts):
    ch, _, _, cands, targets = parts
    sc = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets, token_budget=100)
    for row in (1, 7, 30, 99, 100, 500):
        b = sc.batch_size_for(row)
        assert b >= 1 and (b == 1 or b * row <= 100)
    capped = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets, batch_cap=2)
    assert capped.batch_size_for(5) == 2
    # a small budget really splits the work into several batches
    sc.score(cands)
    assert sc.stats.batches >= len(cands) * (len(targets) + 4) // 100


def test_scoring_batches_are_sized_by_the_shared_memory_budget(tiny_lm, parts, monkeypatch):
    """The scorer sizes its batches with engine.budget, as the sampler and the judges do: the
    per-row bound is the one formula of the judges' batches (KV of prefix + row, activations,
    logits and log-softmax per scored position; on CPU fp32 the same bytes the scorer counted
    before), the usable share and ``TOKENFORGE_MEMORY_BYTES`` apply to it, and the scores do not
    depend on the batch size it picks."""
    from engine.advtok.judges.padded import rows_for_memory
    from engine.budget import forward_bound, kv_bytes_per_token, rows_that_fit

    ch, _, _, cands, targets = parts
    sc = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets, token_budget=10**6)
    cfg = tiny_lm.model.config
    row = 12
    per_row = (kv_bytes_per_token(cfg, 4) * (len(ch.prefix_ids) + row)
               + 16 * row * cfg.hidden_size * 4 + len(targets) * cfg.vocab_size * 4 * 2)
    assert sc.row_bound(row).per_unit == per_row
    # the judges' rows through the same bound
    j = forward_bound("judge batch", cfg, 4, positions=40, fed=40, logit_rows=1)
    assert rows_for_memory(tiny_lm.model, 40, 10**6) == rows_that_fit(j, 10**6)

    roomy = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets, token_budget=10**6).score(cands)
    # usable = half of the memory given: 2.5 rows of the longest candidate → 2 rows per batch
    longest = max(len(c) for c in cands) + len(targets)
    monkeypatch.setenv("TOKENFORGE_MEMORY_BYTES", str(5 * sc.row_bound(longest).per_unit))
    assert sc.batch_size_for(longest) == 2
    tight = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets, token_budget=10**6)
    got = tight.score(cands)
    assert tight.stats.batches >= len(cands) // 2
    assert max(abs(a - b) for a, b in zip(got, roomy)) < ATOL
    monkeypatch.setenv("TOKENFORGE_MEMORY_BYTES", "1")        # not one row: still one at a time
    assert sc.batch_size_for(longest) == 1
    # a whole search finds the same tokenization whatever batch sizes the memory allows
    from engine.advtok.search import AttackConfig, run_attack

    cfg = AttackConfig(request=REQUEST, response=RESPONSE, iters=2, samples=0)
    one_row = run_attack(tiny_lm, cfg)
    monkeypatch.delenv("TOKENFORGE_MEMORY_BYTES")
    free = run_attack(tiny_lm, cfg)
    assert one_row.best_ids == free.best_ids and one_row.iterations == free.iterations
    assert one_row.best_score == pytest.approx(free.best_score, abs=ATOL)


def test_scoring_out_of_memory_halves_and_loses_no_candidate(tiny_lm, parts, monkeypatch):
    """A scoring batch that runs out of memory (engine.budget.is_oom) is retried at half its
    rows; every candidate gets its score, equal to the unhalved run's."""
    ch, _, _, cands, targets = parts
    want = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets, batch_cap=8).score(cands)
    sc = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets, batch_cap=8)
    real = sc._forward_batch
    seen = []

    def small_memory(batch, *a, **kw):
        seen.append(len(batch))
        if len(batch) > 2:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return real(batch, *a, **kw)

    monkeypatch.setattr(sc, "_forward_batch", small_memory)
    got = sc.score(cands)
    assert sc.stats.oom_halvings >= 1 and max(seen) > 2 and sc.stats.scored == len(set(map(tuple, cands)))
    assert max(abs(a - b) for a, b in zip(got, want)) < ATOL


def test_batch_plan_is_optimal_by_brute_force(tiny_lm, parts):
    import itertools

    from engine.advtok.score import BATCH_OVERHEAD_TOKENS

    ch, _, _, _, targets = parts
    sc = CandidateScorer(tiny_lm, ch.prefix_ids, [], targets, token_budget=60, batch_cap=4)
    rng = random.Random(3)
    for _ in range(20):
        n = rng.randint(1, 7)
        todo = [tuple(range(rng.randint(2, 9))) + (i,) for i in range(n)]
        sh = {k: rng.randint(0, len(k) - 1) for k in todo}
        todo.sort(key=lambda k: (-sh[k], len(k)))
        extra = 5

        def cost(sizes):
            i = total = 0
            for b in sizes:
                rows = todo[i:i + b]
                row = max(map(len, rows)) - min(sh[k] for k in rows) + extra
                if b > 4 or (b > 1 and row * b > 60):
                    return None
                total += b * row + BATCH_OVERHEAD_TOKENS
                i += b
            return total

        best = None
        for cuts in itertools.product([0, 1], repeat=n - 1):
            sizes, run = [], 1
            for c in cuts:
                if c:
                    sizes.append(run)
                    run = 1
                else:
                    run += 1
            sizes.append(run)
            c = cost(sizes)
            if c is not None and (best is None or c < best):
                best = c
        plan = sc.plan(todo, sh, extra)
        assert sum(plan) == n and cost(plan) == best


def test_bad_scorer_inputs(tiny_lm, parts):
    ch, _, _, _, targets = parts
    with pytest.raises(InputError):
        CandidateScorer(tiny_lm, ch.prefix_ids, [], [])
    with pytest.raises(InputError):
        CandidateScorer(tiny_lm, ch.prefix_ids, [], targets, batch_cap=0)
    with pytest.raises(InputError):
        CandidateScorer(tiny_lm, ch.prefix_ids, [], targets).score([[]])


def test_flops_accounting_orders_strategies(tiny_lm):
    cfg = tiny_lm.model.config
    # the reference shape (long rows, head everywhere) is more work than prefix + sliced head
    ref = forward_flops(cfg, new_tokens=40, past=20, head_positions=40)
    ours = forward_flops(cfg, new_tokens=15, past=32, head_positions=10)
    assert ref > ours > 0


def test_bundled_model_batched_equals_reference(smol_lm):
    """The real model once (fp32 numerics of a 30-layer net), two candidates."""
    tok = smol_lm.tokenizer
    ch = split_template(tok, DEFAULT_SYSTEM)
    mdd = MDD(load_vocab(tok), ch.request_text("Say hi"))
    x = mdd.canonical(tok)
    cands = [x] + mdd.neighbours(x, 2)[:1]
    targets = ch.tail_ids + ch.response_ids("Hi!")
    got = CandidateScorer(smol_lm, ch.prefix_ids, [], targets).score(cands)
    ref = reference_scores(smol_lm, ch.prefix_ids, cands, [], targets, batch_size=1)
    assert max(abs(a - b) for a, b in zip(got, ref)) < ATOL
    assert got.index(max(got)) == ref.index(max(ref))
