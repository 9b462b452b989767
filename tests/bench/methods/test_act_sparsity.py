"""Activation sparsity: Top-K against brute force, the PCA rotation is orthogonal and ordered,
the requested sparsity is reached exactly (in the basis where the vector is sparse), the model
is restored bit for bit, calibration text differs from the evaluation prose."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs

from engine.errors import InputError
from engine.bench.methods import make_method
from engine.bench.methods.act_sparsity import (calibration_text, collect_second_moments, mlp_modules,
                                         pca_rotation, topk_mask)
from engine.bench.methods.base import Query
from engine.lm.templates import encode_user_text


def _logits(lm, ids):
    m = make_method("baseline")
    fwd = m.forward(lm)
    return fwd.logits(torch.tensor([ids]), fwd.new_cache(), keep=0)[0]


@settings(max_examples=50, deadline=None)
@given(hs.integers(1, 4), hs.integers(1, 12), hs.integers(0, 12), hs.integers(0, 10_000))
def test_topk_mask_brute_force(rows, h, keep, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, h, generator=g)
    got = topk_mask(x, keep)
    for r in range(rows):
        order = sorted(range(h), key=lambda j: -abs(float(x[r, j])))
        kept = set(order[:min(keep, h)])
        for j in range(h):
            assert float(got[r, j]) == (float(x[r, j]) if j in kept else 0.0)


def test_pca_rotation_orthogonal_and_ordered():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g) * torch.linspace(0.1, 3.0, 16)
    c = (x.T @ x).double()
    q = pca_rotation(c)
    assert torch.allclose(q.T @ q, torch.eye(16), atol=1e-5)
    d = (q.double().T @ c @ q.double())
    diag = torch.diagonal(d)
    assert torch.allclose(d, torch.diag(diag), atol=1e-3 * float(diag.max()))
    assert all(diag[i] >= diag[i + 1] - 1e-6 for i in range(15))


def test_second_moments_match_captured_inputs(tiny_lm):
    text = "Short calibration words, with a number: 12."
    m = make_method("baseline")
    moments, n = collect_second_moments(tiny_lm, m.forward(tiny_lm), text)
    seen = []
    hook = mlp_modules(tiny_lm.model)[1].register_forward_pre_hook(
        lambda mod, args: seen.append(args[0].reshape(-1, args[0].shape[-1]).double()))
    try:
        _logits(tiny_lm, encode_user_text(tiny_lm.tokenizer, text))
    finally:
        hook.remove()
    x = seen[0]
    assert n == x.shape[0]
    assert torch.allclose(moments[1], x.T @ x, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["sparsity-magnitude", "sparsity-rotated"])
def test_requested_sparsity_reached_and_model_restored(tiny_lm, sample_text, name):
    ids = encode_user_text(tiny_lm.tokenizer, sample_text)[:60]
    before = _logits(tiny_lm, ids)
    m = make_method(name, sparsity=0.5)
    m.prepare(tiny_lm)
    try:
        changed = _logits(tiny_lm, ids)
        res = m.nll_bits_per_byte(tiny_lm, sample_text[:400])
    finally:
        m.restore(tiny_lm)
    assert res["sparsity_measured"] == pytest.approx(0.5, abs=1e-9)  # H = 64: exactly 32 zeros
    assert res["bpb"] > 0
    assert not torch.allclose(changed, before, atol=1e-3)
    assert all(not mod._forward_pre_hooks for mod in mlp_modules(tiny_lm.model))
    assert torch.equal(_logits(tiny_lm, ids), before)
    q = Query(id="c", kind="chat", prompt="Name three colours.")
    out = m.run(tiny_lm, q, 3)  # unprepared call: applies and removes the change itself
    assert out.extra["sparsity_measured"] == pytest.approx(0.5, abs=1e-9)
    assert all(not mod._forward_pre_hooks for mod in mlp_modules(tiny_lm.model))
    assert m.speed_note == "n/a: no sparse kernel" and m.model_changing


def test_rotated_at_zero_sparsity_is_dense_and_calibration_is_separate(tiny_lm, sample_text):
    ids = encode_user_text(tiny_lm.tokenizer, sample_text)[:40]
    dense = _logits(tiny_lm, ids)
    m = make_method("sparsity-rotated", sparsity=0.0)
    aux = m.prepare(tiny_lm)
    try:
        rot = _logits(tiny_lm, ids)
    finally:
        m.restore(tiny_lm)
    assert torch.allclose(rot, dense, atol=1e-3)
    cal = calibration_text()
    assert sample_text.strip() and sample_text[:200] not in cal
    assert m.calibration_tokens == len(encode_user_text(tiny_lm.tokenizer, cal))
    assert aux >= 0.0
    again = make_method("sparsity-rotated", sparsity=0.0)
    assert again.prepare(tiny_lm) == 0.0  # calibration is cached per model
    again.restore(tiny_lm)
    assert again.rotations[0] is m.rotations[0]


@pytest.mark.parametrize("kw", [dict(sparsity=1.0), dict(sparsity=-0.1), dict(sparsity="0.4")])
def test_bad_params(kw):
    with pytest.raises(InputError):
        make_method("sparsity-magnitude", **kw)
