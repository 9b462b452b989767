"""Activation sparsity: Top-K against brute force, the PCA rotation is orthogonal and ordered,
every projection input (q/k/v, o_proj, gate/up, down_proj) is sparsified at the requested
sparsity and weighted to the model level, rotated Top-K at sparsity 0 is the dense model, the
calibration is computed once and cached on disk (safetensors, keyed by weights + text +
settings; a damaged file is rebuilt), the model is restored bit for bit."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs

from engine.errors import InputError
from engine.bench.methods import make_method
from engine.bench.methods.act_sparsity import (SITES, calibration_text, collect_second_moments,
                                               layer_sites, pca_rotation, site_weights,
                                               sparsity_calibration_text, topk_mask)
from engine.bench.methods.base import Query
from engine.lm.templates import encode_user_text

CAL = 192  # calibration tokens for the tiny model (the 20,480 default is for the real run)


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch, tmp_path):
    """Each test calibrates into its own cache folder (no shared files, no earlier result)."""
    monkeypatch.setenv("TOKENFORGE_CACHE", str(tmp_path / "cache"))
    from engine.bench.methods import act_sparsity

    act_sparsity._CALIB.clear()


def _logits(lm, ids):
    m = make_method("baseline")
    fwd = m.forward(lm)
    return fwd.logits(torch.tensor([ids]), fwd.new_cache(), keep=0)[0]


def _no_hooks(lm):
    return all(not mods[s]._forward_pre_hooks for mods in layer_sites(lm.model) for s in SITES)


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
    ids = encode_user_text(tiny_lm.tokenizer, "Short calibration words, with a number: 12.")
    m = make_method("baseline")
    moments = collect_second_moments(tiny_lm, m.forward(tiny_lm), ids)
    seen = {}
    sites = layer_sites(tiny_lm.model)[1]

    def grab(name):
        def pre(mod, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            seen[name] = x.reshape(-1, x.shape[-1]).double()
        return pre

    hooks = [sites[s].register_forward_pre_hook(grab(s), with_kwargs=True) for s in ("attn", "mlp")]
    try:
        _logits(tiny_lm, ids)
    finally:
        for h in hooks:
            h.remove()
    for s in ("attn", "mlp"):
        x = seen[s]
        assert x.shape[0] == len(ids)
        assert torch.allclose(moments[s][1], x.T @ x, rtol=1e-5, atol=1e-6)


def test_site_weights_are_what_each_input_feeds(tiny_lm):
    w = site_weights(tiny_lm.model)[0]
    cfg = tiny_lm.model.config
    h, i, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads
    hd = h // cfg.num_attention_heads
    assert w == {"attn": h * h + 2 * h * kv * hd, "o": h * h, "mlp": 2 * h * i, "down": i * h}


@pytest.mark.parametrize("name", ["sparsity-magnitude", "sparsity-rotated"])
def test_every_projection_input_sparse_and_model_restored(tiny_lm, sample_text, name):
    ids = encode_user_text(tiny_lm.tokenizer, sample_text)[:60]
    before = _logits(tiny_lm, ids)
    kw = {"calib_tokens": CAL} if name == "sparsity-rotated" else {}
    m = make_method(name, sparsity=0.5, **kw)
    m.prepare(tiny_lm)
    try:
        changed = _logits(tiny_lm, ids)
        res = m.nll_bits_per_byte(tiny_lm, sample_text[:400])
    finally:
        m.restore(tiny_lm)
    # H = 64 and I = 128: exactly half of every input is zero, so the model level is 0.5 too
    assert set(res["sparsity_by_projection"]) == {"q/k/v", "o_proj", "gate/up", "down_proj"}
    for v in res["sparsity_by_projection"].values():
        assert v == pytest.approx(0.5, abs=1e-9)
    assert res["sparsity_measured"] == pytest.approx(0.5, abs=1e-9)
    assert res["sparsity_target_model"] == pytest.approx(0.5, abs=1e-9)
    # the dense lm_head is read too: over all weights the saving is smaller
    assert 0 < res["sparsity_all_weights"] < res["sparsity_measured"]
    assert res["bpb"] > 0
    assert not torch.allclose(changed, before, atol=1e-3)
    assert _no_hooks(tiny_lm)
    assert torch.equal(_logits(tiny_lm, ids), before)
    q = Query(id="c", kind="chat", prompt="Name three colours.")
    out = m.run(tiny_lm, q, 3)  # unprepared call: applies and removes the change itself
    # (a zero vector fed anyway, e.g. a padding row's, counts too: at least the target)
    assert 0.5 <= out.extra["sparsity_measured"] < 0.52
    assert out.extra["sparsity_by_projection"]["gate/up"] == pytest.approx(0.5, abs=1e-9)
    assert _no_hooks(tiny_lm)
    assert m.speed_note == "n/a: no sparse kernel" and m.model_changing


def test_model_level_weights_inputs_by_the_weights_they_feed(tiny_lm, sample_text):
    """Widths 64 (attn, o, mlp) and 128 (down) round differently at s = 0.3: 19/64 and 38/128
    zeros; the model-level figure is their mean weighted by the weights each input feeds."""
    m = make_method("sparsity-magnitude", sparsity=0.3)
    res = m.nll_bits_per_byte(tiny_lm, sample_text[:300])
    by = res["sparsity_by_projection"]
    assert by["q/k/v"] == pytest.approx(19 / 64) and by["down_proj"] == pytest.approx(38 / 128)
    w = site_weights(tiny_lm.model)[0]
    want = (19 / 64 * (w["attn"] + w["o"] + w["mlp"]) + 38 / 128 * w["down"]) / sum(w.values())
    assert res["sparsity_measured"] == pytest.approx(want, rel=1e-9)
    assert res["sparsity_target_model"] == pytest.approx(want, rel=1e-9)


def test_rotated_at_zero_sparsity_is_the_dense_model(tiny_lm, sample_text):
    ids = encode_user_text(tiny_lm.tokenizer, sample_text)[:40]
    dense = _logits(tiny_lm, ids)
    m = make_method("sparsity-rotated", sparsity=0.0, calib_tokens=CAL)
    m.prepare(tiny_lm)
    try:
        rot = _logits(tiny_lm, ids)
        # the rotations are real (not the identity), so the equality is the rotation undone
        assert not torch.allclose(m.rotations["attn"][0], torch.eye(64), atol=0.1)
    finally:
        m.restore(tiny_lm)
    assert torch.allclose(rot, dense, rtol=1e-5, atol=1e-5 * float(dense.abs().max()))


def test_calibration_cached_on_disk_and_keyed(tiny_lm, tmp_path):
    from safetensors import safe_open

    m = make_method("sparsity-rotated", calib_tokens=CAL)
    assert m.prepare(tiny_lm) > 0.0
    m.restore(tiny_lm)
    assert m.calibration_tokens == CAL
    path = m.cache_file
    assert path.parent == tmp_path / "cache" / "sparsity" and path.suffix == ".safetensors"
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata()["tokens"] == str(CAL)
        assert fh.get_tensor("mlp.1").shape == (64, 64)
    # a new process (no in-memory copy) reads the file: the same matrices, nothing recomputed
    from engine.bench.methods import act_sparsity

    act_sparsity._CALIB.clear()
    again = make_method("sparsity-rotated", calib_tokens=CAL)
    calls = []
    orig = act_sparsity.collect_second_moments
    act_sparsity.collect_second_moments = lambda *a, **k: calls.append(1) or orig(*a, **k)
    try:
        again.prepare(tiny_lm)
        again.restore(tiny_lm)
        assert calls == [] and torch.equal(again.rotations["attn"][1], m.rotations["attn"][1])
        # other settings → another entry
        other = make_method("sparsity-rotated", calib_tokens=CAL + 8)
        other.prepare(tiny_lm)
        other.restore(tiny_lm)
        assert calls == [1] and other.cache_file != path
        # a damaged file is moved aside and rebuilt, never used
        act_sparsity._CALIB.clear()
        raw = bytearray(path.read_bytes())
        raw[-10] ^= 0xFF
        path.write_bytes(bytes(raw))
        fresh = make_method("sparsity-rotated", calib_tokens=CAL)
        fresh.prepare(tiny_lm)
        fresh.restore(tiny_lm)
        assert calls == [1, 1]
        assert torch.allclose(fresh.rotations["mlp"][0], m.rotations["mlp"][0])
        assert (path.parent / (path.name + ".broken")).exists()
    finally:
        act_sparsity.collect_second_moments = orig


def test_calibration_text_is_long_enough_and_separate(tokenizer, sample_text):
    text = sparsity_calibration_text()
    assert len(encode_user_text(tokenizer, text)) >= 20_480  # the default calib_tokens
    assert sample_text[:200] not in text


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def _suite_pieces() -> list[tuple[str, str]]:
    """(where, text) of every shipped suite's query, turns, document and reference, whole and
    sentence by sentence, and of the held-out prose files; pieces under four words (one-word
    answers such as "forty") are too common to mean an overlap."""
    import re

    from engine.bench.suite_files import SUITES_DIR, shipped_suites, suite_entries

    texts = []
    for name in shipped_suites():
        for rec in suite_entries(name):
            for k in ("prompt", "document", "reference"):
                if isinstance(rec.get(k), str):
                    texts.append((f"{name}/{rec.get('id')}/{k}", rec[k]))
            texts += [(f"{name}/{rec.get('id')}/turns", t) for t in rec.get("turns") or []]
    texts += [(p.name, p.read_text(encoding="utf-8")) for p in SUITES_DIR.glob("*-prose.txt")]
    out = []
    for where, t in texts:
        for piece in [t, *re.split(r"(?<=[.?!])\s+", t)]:
            if len(piece.split()) >= 4:
                out.append((where, _norm(piece)))
    return out


def test_calibration_text_shares_no_text_with_any_shipped_suite():
    """LaRoSA's rotations are fitted on the calibration text: a measured query (or its document or
    answer) inside it would flatter the row (the short calibration text, once part of it, held
    seed-v1's how-it-works question verbatim)."""
    pieces = _suite_pieces()
    assert len(pieces) > 50  # the suites were read
    cal = _norm(sparsity_calibration_text())
    assert [where for where, p in pieces if p in cal] == []
    # the check is live: a suite's query pasted into prose is found
    from engine.bench.suite_files import suite_entries

    query = suite_entries("seed-v1")[0]["prompt"]
    assert any(p in _norm(f"Some prose before.\n{query}  And after.") for _, p in pieces)


def test_rotation_cache_key_follows_the_text(tiny_lm):
    m = make_method("sparsity-rotated", calib_tokens=CAL)
    a, b = m.cache_key(tiny_lm, "one text"), m.cache_key(tiny_lm, "one text.")
    assert a != b and m.cache_key(tiny_lm, "one text") == a
    assert m.cache_key(tiny_lm, sparsity_calibration_text()) != \
        m.cache_key(tiny_lm, calibration_text() + "\n\n" + sparsity_calibration_text())


def test_too_short_calibration_text_is_one_clear_error(tiny_lm):
    m = make_method("sparsity-rotated", calibration="Only a few words here.", calib_tokens=500)
    with pytest.raises(InputError, match="calibration text has"):
        m.prepare(tiny_lm)
    assert _no_hooks(tiny_lm)


@pytest.mark.parametrize("name,kw", [("sparsity-magnitude", dict(sparsity=1.0)),
                                     ("sparsity-magnitude", dict(sparsity=-0.1)),
                                     ("sparsity-magnitude", dict(sparsity="0.4")),
                                     ("sparsity-magnitude", dict(calib_tokens=100)),
                                     ("sparsity-rotated", dict(calib_tokens=1)),
                                     ("sparsity-rotated", dict(calib_tokens=True))])
def test_bad_params(name, kw):
    with pytest.raises(InputError):
        make_method(name, **kw)


def test_bundled_model_rotated_zero_is_dense_and_sparsity_is_model_level(smol_lm, sample_text):
    """SmolLM2-135M (slow: the bundled model): rotated Top-K at s = 0 is the dense model within
    fp32 rounding; at s = 0.4 every input of every layer is 0.4 sparse up to rounding of K
    (230 of 576, 614 of 1,536 zeros), so the model level is 0.4 as well — where the earlier
    MLP-only row was 0.2. (2,048 calibration tokens here; the row's default is 20,480.)"""
    ids = encode_user_text(smol_lm.tokenizer, sample_text)[:64]
    dense = _logits(smol_lm, ids)
    m = make_method("sparsity-rotated", sparsity=0.0, calib_tokens=2048)
    m.prepare(smol_lm)
    try:
        rot = _logits(smol_lm, ids)
    finally:
        m.restore(smol_lm)
    assert torch.allclose(rot, dense, rtol=1e-5, atol=1e-5 * float(dense.abs().max()))
    res = make_method("sparsity-rotated", sparsity=0.4, calib_tokens=2048).nll_bits_per_byte(
        smol_lm, sample_text[:600])
    by = res["sparsity_by_projection"]
    assert by["q/k/v"] == by["o_proj"] == by["gate/up"] == pytest.approx(230 / 576)
    assert by["down_proj"] == pytest.approx(614 / 1536)
    assert res["sparsity_measured"] == pytest.approx(0.3994, abs=1e-4)
    assert _no_hooks(smol_lm)


def test_all_combined_reports_the_model_level_sparsity(tiny_lm, sample_text):
    q = Query(id="doc", kind="qa", prompt="What did the neighbour do?", document=sample_text[:800])
    m = make_method("all-combined", **{"cache.budget": 40, "cache.window": 8,
                                       "model.sparsity": 0.5, "model.calib_tokens": CAL})
    m.prepare(tiny_lm)
    try:
        out = m.run(tiny_lm, q, 4, fixed_length=True)
    finally:
        m.restore(tiny_lm)
    assert out.extra["rotated"] and out.extra["calibration_tokens"] == CAL
    import hashlib

    assert out.extra["calibration_text_sha"] == \
        hashlib.sha256(sparsity_calibration_text().encode()).hexdigest()[:12]
    assert out.extra["sparsity_by_projection"]["gate/up"] == pytest.approx(0.5, abs=1e-9)
    assert 0.5 <= out.extra["sparsity_measured"] < 0.52
    assert _no_hooks(tiny_lm)


# ---- a first calibration reports its progress and stops cleanly ----------------------------------
def _sparsity_files() -> list[str]:
    """What the cache's sparsity folder holds besides lock files."""
    from engine.paths import cache_dir

    d = cache_dir("sparsity")
    return sorted(p.name for p in d.rglob("*") if p.is_file() and "lock" not in p.name)


def test_calibration_reports_tokens_and_layers(tiny_lm):
    from engine.progress import Progress

    m = make_method("baseline")
    ids = encode_user_text(tiny_lm.tokenizer, sparsity_calibration_text())[:CAL]
    seen: list[Progress] = []
    collect_second_moments(tiny_lm, m.forward(tiny_lm), ids, window=64, progress=seen.append)
    layers = len(layer_sites(tiny_lm.model))
    assert {p.phase for p in seen} == {"calibrate"} and all(p.total == CAL for p in seen)
    steps = [p.step for p in seen]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == CAL
    assert f"{layers}/{layers}" in {p.metrics["layers"] for p in seen}
    assert {p.metrics["window"] for p in seen} >= {"1/3", "2/3", "3/3"}
    # one report per layer of each window (and one before it), then the closing one
    assert len(seen) == 3 * (layers + 1) + 1
    assert "window 2/3, layer 1/" in " ".join(p.message for p in seen)


def test_cancel_during_calibration_leaves_no_cache_file(tiny_lm):
    """Cancelled inside the forward (after the first layer): Cancelled, the hooks gone, nothing
    written; the next prepare calibrates from scratch and writes the file."""
    from engine.progress import Cancelled, CancelToken

    tok = CancelToken()
    layers = len(layer_sites(tiny_lm.model))
    assert layers >= 2

    def stop(p):
        if p.metrics.get("layers") == f"1/{layers}":
            tok.cancel("user")

    m = make_method("sparsity-rotated", calib_tokens=CAL)
    try:
        with pytest.raises(Cancelled):
            m.prepare(tiny_lm, progress=stop, cancel=tok)
    finally:
        m.restore(tiny_lm)
    assert _no_hooks(tiny_lm) and _sparsity_files() == []
    seen = []
    fresh = make_method("sparsity-rotated", calib_tokens=CAL)
    fresh.prepare(tiny_lm, progress=seen.append)
    fresh.restore(tiny_lm)
    assert seen and seen[-1].step == CAL
    assert any(n.startswith("larosa-") and n.endswith(".safetensors") for n in _sparsity_files())


def test_the_bench_passes_progress_and_cancel_into_calibration(tiny_lm, tmp_path):
    """The harness hands its progress and cancel to ``prepare``: a cancel during the calibration
    stops the bench with no rotation file written; a rerun shows the calibration's progress."""
    from engine.bench.config import BenchConfig
    from engine.bench.harness import run_bench
    from engine.progress import CancelToken

    def cfg():
        return BenchConfig(methods=["sparsity-rotated"], query_ids=["qa-1"], repeats=1,
                           max_new_tokens=2, warmup=False,
                           params={"sparsity-rotated": {"calib_tokens": CAL}})

    tok = CancelToken()
    phases: list[str] = []

    def stop(p):
        phases.append(p.phase)
        if p.phase == "calibrate" and p.step > 0:
            tok.cancel("user")

    out = tmp_path / "runs.jsonl"
    s = run_bench(tiny_lm, cfg(), out, progress=stop, cancel=tok)
    assert s.cancelled and "calibrate" in phases and _sparsity_files() == []
    assert _no_hooks(tiny_lm)
    seen = []
    s = run_bench(tiny_lm, cfg(), out, progress=seen.append, cancel=CancelToken())
    assert not s.cancelled and s.errors == 0 and s.written >= 1
    cal = [p for p in seen if p.phase == "calibrate"]
    assert cal and cal[-1].step == cal[-1].total == CAL
    assert _sparsity_files()


def test_cli_says_it_is_calibrating(tiny_dir, tmp_path, capsys):
    from app.cli import main

    rc = main(["bench", "--model", str(tiny_dir), "--engine-path", "standard",
               "--methods", "sparsity-rotated", "--param", f"sparsity-rotated.calib_tokens={CAL}",
               "--queries", "qa-1", "--repeats", "1", "--max-new-tokens", "2", "--no-warmup",
               "--out", str(tmp_path / "runs.jsonl")])
    assert rc == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"calibrating LaRoSA rotations on {CAL} tokens: once per model and text" in err
