"""The reduced-precision decode path (engine/lm/quantized.py): close to the exact lean path within
a stated bound, labelled inexact wherever the model is named, and never used for scoring."""
from __future__ import annotations

import random

import pytest
import torch

from engine.lm.fastpath import LeanForward, make_lean_forward
from engine.lm.forward import ENGINE_PATHS, EXACT_PATHS, get_forward, is_exact
from engine.lm.quantized import Int8LeanForward, int8_supported, make_int8_forward, quantize_rows
from engine.lm.tiny import tiny_llama

pytestmark = pytest.mark.skipif(int8_supported() is not None, reason=str(int8_supported()))

# Bound on the tiny model (measured there: ≈ 1 % of the largest logit): int8 weight rounding
# (≤ half a step = max|w_row|/254 per weight) plus bf16 activations, through 2 layers and the head.
REL_BOUND = 0.03


def _prompt(tok) -> list[int]:
    return tok.encode("The lighthouse keeper opened the bottle and read the message")


def _greedy(fwd, prompt: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    cache = fwd.new_cache()
    lo = fwd.logits(torch.tensor([prompt]), cache)[0, -1]
    out, rows = [], []
    for _ in range(n):
        rows.append(lo)
        t = int(lo.argmax())
        out.append(t)
        lo = fwd.logits(torch.tensor([[t]]), cache)[0, -1]
    return out, torch.stack(rows)


def test_quantize_rows_error_is_at_most_half_a_step():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(37, 50, generator=g) * torch.logspace(-3, 1, 37)[:, None]
    w[5] = 0.0
    q, s = quantize_rows(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) <= 127
    err = (q.float() * s[:, None] - w).abs()
    assert bool((err <= s[:, None] / 2 + 1e-7).all())
    assert float(err[5].max()) == 0.0 and float(s[5]) == 1.0


def test_decode_logits_close_to_fp32_and_greedy_agreement(tiny_lm):
    exact = make_lean_forward(tiny_lm.model)
    q8 = make_int8_forward(tiny_lm.model)
    assert isinstance(q8, Int8LeanForward) and not is_exact(q8) and is_exact(exact)
    prompt = _prompt(tiny_lm.tokenizer)
    ref, ref_rows = _greedy(exact, prompt, 48)
    # teacher-forced on the exact tokens, one at a time as in decoding
    cache = q8.new_cache()
    rows = [q8.logits(torch.tensor([prompt]), cache)[0, -1]]
    for t in ref[:-1]:
        rows.append(q8.logits(torch.tensor([[t]]), cache)[0, -1])
    got = torch.stack(rows)
    rel = float((got - ref_rows).abs().max() / ref_rows.abs().max())
    assert 0.0 < rel < REL_BOUND  # inexact (not silently the fp32 path), but close
    lp, lq = torch.log_softmax(ref_rows, -1), torch.log_softmax(got, -1)
    kl = float((lp.exp() * (lp - lq)).sum(-1).mean())
    assert kl < 0.01
    top1 = float((ref_rows.argmax(-1) == got.argmax(-1)).float().mean())
    assert top1 >= 0.9
    # free-running greedy agreement: up to the first divergence the prefixes are equal, so there
    # the exact logits rank the two choices; int8 may only flip a near-tie (gap within its error)
    mine, _ = _greedy(q8, prompt, 48)
    div = next((i for i, (a, b) in enumerate(zip(ref, mine)) if a != b), None)
    if div is not None:
        gap = float(ref_rows[div, ref[div]] - ref_rows[div, mine[div]])
        err = float((got[div] - ref_rows[div]).abs().max())
        assert 0.0 <= gap <= 2 * err, f"diverged at {div} on a gap {gap} > 2x error {err}"


def test_long_products_stay_fp32_so_prefill_cache_is_exact(tiny_lm):
    exact = make_lean_forward(tiny_lm.model)
    q8 = make_int8_forward(tiny_lm.model)
    prompt = (_prompt(tiny_lm.tokenizer) * 4)[:40]  # > SPLIT_MAX_ROWS rows: fp32 products
    ce, cq = exact.new_cache(), q8.new_cache()
    he = exact.hidden(torch.tensor([prompt]), ce)
    hq = q8.hidden(torch.tensor([prompt]), cq)
    assert torch.equal(he, hq)
    assert torch.equal(ce.store.k[:, :, :, :40], cq.store.k[:, :, :, :40])


def test_weight_edit_requantizes(tokenizer):
    lm = tiny_llama(tokenizer, seed=3)
    q8 = make_int8_forward(lm.model)
    prompt = _prompt(tokenizer)
    before = q8.logits(torch.tensor([prompt[:5]]), q8.new_cache())
    with torch.no_grad():
        lm.model.model.layers[0].mlp.down_proj.weight.mul_(0.0)
    after = q8.logits(torch.tensor([prompt[:5]]), q8.new_cache())
    lean = make_lean_forward(lm.model)
    ref = lean.logits(torch.tensor([prompt[:5]]), lean.new_cache())
    assert not torch.allclose(before, after)
    assert float((after - ref).abs().max() / ref.abs().max()) < REL_BOUND


def test_engine_path_int8_selected_labelled_and_never_used_for_scoring(tokenizer):
    from engine.advtok.score import CandidateScorer, reference_scores
    from engine.advtok.search import DEFAULT_SYSTEM
    from engine.lm.templates import split_template

    lm = tiny_llama(tokenizer, seed=1)
    assert "int8" in ENGINE_PATHS and "int8" not in EXACT_PATHS
    lm.engine_path = "int8"
    fwd = get_forward(lm)
    assert fwd.name == "int8" and not is_exact(fwd)
    assert "INEXACT" in lm.describe()
    ex = get_forward(lm, exact=True)
    assert isinstance(ex, LeanForward) and not isinstance(ex, Int8LeanForward) and is_exact(ex)
    assert get_forward(lm) is fwd  # asking for the exact one does not replace the chosen path
    # AdvTok scoring with the int8 path chosen equals scoring on the exact path, bit for bit
    ch = split_template(tokenizer, DEFAULT_SYSTEM)
    targets = ch.tail_ids + ch.response_ids("Sure, here it is.")
    rng = random.Random(0)
    cands = [[rng.randrange(100, 5000) for _ in range(rng.randrange(3, 8))] for _ in range(4)]
    sc = CandidateScorer(lm, ch.prefix_ids, [], targets)
    assert is_exact(sc.fwd) and sc.fwd is ex
    got = sc.score(cands)
    ref_int8_chosen = reference_scores(lm, ch.prefix_ids, cands, [], targets)
    lm.engine_path = "fast"
    assert "INEXACT" not in lm.describe()
    ref_fast = reference_scores(lm, ch.prefix_ids, cands, [], targets)
    assert ref_int8_chosen == ref_fast
    assert max(abs(a - b) for a, b in zip(got, ref_fast)) < 1e-4


def test_cli_engine_paths_match_the_engine():
    from app.commands.common import ENGINE_PATHS as CLI_PATHS
    from engine.bounds import bound_of
    from engine.lm.config import ModelConfig

    assert tuple(CLI_PATHS) == tuple(ENGINE_PATHS)
    assert bound_of(ModelConfig, "engine_path").choices == tuple(ENGINE_PATHS)  # profiles use it
