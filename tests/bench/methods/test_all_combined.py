"""all-combined with every part at once: pruning, then the pruned prompt encoded with phrase
merge's vocabulary, on a model that carries the merged rows and the LaRoSA hooks together, fed
through the cache part; measured whole, undone exactly (docs/bench-methods.md, "All combined")."""
from __future__ import annotations

import json

import pytest
import torch

from engine.bench.harness import BenchConfig, run_bench
from engine.bench.methods import make_method
from engine.bench.methods.act_sparsity import SITES, layer_sites
from engine.bench.methods.base import Query
from engine.bench.methods.combined import ALL_PARTS, AllCombined
from engine.bench.methods.prompt_prune import word_surprisal
from engine.bench.suite import load_suite
from engine.errors import InputError
from engine.lm.weights_hash import weights_hash

CAL = 192  # calibration tokens for the tiny model (the 20,480 default is for the real run)
SMALL = {"cache.budget": 40, "cache.window": 8, "model.sparsity": 0.3, "model.calib_tokens": CAL}


@pytest.fixture(scope="module")
def suite():
    return load_suite("core-v1")


def _query(suite, qid="qa-1") -> Query:
    return next(q for q in suite.queries if q.id == qid)


def _all(suite=None, **params):
    m = make_method("all-combined", **{**SMALL, **params})
    if suite is not None:
        m.use_suite(suite)
    return m


def _snapshot(lm):
    model = lm.model
    hooks = sum(len(mod._forward_pre_hooks) + len(mod._forward_hooks) for mod in model.modules())
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            model.get_input_embeddings(), model.get_output_embeddings(),
            model.get_input_embeddings().weight.shape[0], model.config.vocab_size, hooks)


def _assert_same(lm, before):
    state, emb, head, rows, vocab, hooks = before
    after = _snapshot(lm)
    assert after[0].keys() == state.keys()
    assert all(torch.equal(after[0][k], state[k]) for k in state)  # bit for bit
    assert after[1] is emb and after[2] is head  # the original modules, not wrappers
    assert after[3:] == (rows, vocab, hooks)


def test_parts_and_parameters_route_to_the_part_they_name(suite):
    assert list(ALL_PARTS) == ["prompt", "cache", "model", "vocab"]
    m = make_method("all-combined", **{"prompt.ratio": 0.3, "vocab.max_phrases": 8,
                                       "model.sparsity": 0.2, "cache.budget": 40,
                                       "cache.window": 8})
    assert isinstance(m, AllCombined) and list(m.parts) == list(ALL_PARTS)
    assert m.p.params["ratio"] == 0.3 and m.v.params["max_phrases"] == 8
    assert m.m.params["sparsity"] == 0.2 and m.c.params["budget"] == 40
    assert m.params["vocab.max_phrases"] == 8 and m.params["prompt.ratio"] == 0.3
    assert "phrase-merge" in m.label and "untrained" in m.label
    assert "phrase merge" in m.simplification and "pruned first" in m.simplification
    # the vocabulary part learns from the suite's domain: the row's parameters say which
    m.use_suite(suite)
    assert m.params["vocab.domain"].startswith("core-v1:")
    with pytest.raises(InputError) as e:
        make_method("all-combined", **{"tokens.max_phrases": 8})
    assert "vocab.KEY" in e.value.hint
    with pytest.raises(InputError, match="unknown parameter"):
        make_method("all-combined", **{"vocab.bogus": 1})


def test_the_pruned_prompt_is_merged_and_fed_shorter_than_pruning_alone(tiny_lm, suite):
    """A deterministic pruner (every 3rd word) so pruning alone and pruning inside the
    combination drop the same words: the combination feeds the same text in fewer tokens."""
    q = _query(suite, "long-1")
    parts = {"prompt": make_method("prune-nth", n=3),
             "cache": make_method("evict-cake", budget=40, window=8),
             "model": make_method("sparsity-rotated", sparsity=0.3, calib_tokens=CAL),
             "vocab": make_method("phrase-merge")}
    m = AllCombined(parts)
    m.use_suite(suite)
    alone = make_method("prune-nth", n=3)
    pruned = alone.render_prompt(tiny_lm, q)
    a = alone.run(tiny_lm, q, 4)
    before = _snapshot(tiny_lm)
    m.prepare(tiny_lm)
    try:
        out = m.run(tiny_lm, q, 4, fixed_length=True)
        fed = m.render_prompt(tiny_lm, q)
    finally:
        m.restore(tiny_lm)
    _assert_same(tiny_lm, before)
    c = out.cost
    assert out.extra["prompt_tokens_pruned"] == len(pruned) == a.cost["prompt_tokens_effective"]
    assert c["prompt_tokens_effective"] == len(fed) < a.cost["prompt_tokens_effective"]
    assert c["prompt_tokens_in"] == a.cost["prompt_tokens_in"]  # the full prompt, base tokens
    # measured in the same run, not multiplied: the two steps add up to the whole saving
    assert out.extra["tokens_saved_pruning"] == c["prompt_tokens_in"] - len(pruned)
    assert out.extra["tokens_saved_merging"] == len(pruned) - len(fed) > 0
    assert out.extra["tokens_saved"] == c["prompt_tokens_in"] - len(fed)
    assert out.extra["phrases_in_prompt"] and out.extra["domain"].startswith("core-v1:")
    # merging loses nothing: expanded, the fed prompt is the pruned one
    assert m.base_token_ids(fed) == pruned
    assert out.extra["rotated"] and out.extra["sparsity_measured"] > 0.25  # the hooks ran
    assert "layer_budgets" in out.extra  # the cache part ran


def test_generated_merged_ids_decode_to_their_text(tiny_lm, suite):
    """Force the model to emit one merged id every step: the answer is its phrase's text."""
    q = _query(suite)
    m = _all(suite)
    m.prepare(tiny_lm)
    try:
        vocab = m.v.vocabulary(tiny_lm)
        k = next(i for i in range(len(vocab.merges))
                 if tiny_lm.tokenizer.decode(vocab.parts(vocab.new_id(i))).strip().isalpha())
        tid = vocab.new_id(k)
        head = tiny_lm.model.get_output_embeddings()
        plain = head.forward

        def forced(h):
            out = plain(h)
            out[..., tid] += 1e4
            return out

        head.forward = forced  # this wrapper is dropped by restore
        out = m.run(tiny_lm, q, 3)
    finally:
        m.restore(tiny_lm)
    phrase = tiny_lm.tokenizer.decode(vocab.parts(tid))
    assert out.token_ids == [tid] * 3
    assert out.text == tiny_lm.tokenizer.decode(vocab.parts(tid) * 3, skip_special_tokens=True)
    assert phrase.strip() in out.text
    assert m.base_token_ids(out.token_ids) == vocab.parts(tid) * 3
    assert out.extra["new_tokens_generated"] == 3
    assert out.extra["output_base_tokens"] == 3 * len(vocab.parts(tid))


def test_restore_leaves_the_model_bit_identical(tiny_lm, suite):
    q = _query(suite)
    m = _all(suite)
    before = _snapshot(tiny_lm)
    m.prepare(tiny_lm)
    try:
        model = tiny_lm.model
        assert model.get_input_embeddings() is not before[1]  # the rows are on
        assert any(mods[s]._forward_pre_hooks for mods in layer_sites(model) for s in SITES)
        m.run(tiny_lm, q, 3)
    finally:
        m.restore(tiny_lm)
    _assert_same(tiny_lm, before)
    # unprepared calls apply every part for themselves and undo it
    m.run(tiny_lm, q, 2)
    m.nll_bits_per_byte(tiny_lm, suite.prose[:400])
    _assert_same(tiny_lm, before)


def test_a_failing_part_leaves_nothing_applied(tiny_lm, suite, monkeypatch):
    m = _all(suite)
    before = _snapshot(tiny_lm)

    def broken(lm, **kw):
        raise InputError("no domain")

    monkeypatch.setattr(m.p, "prepare", broken)  # the last-but-one part to be prepared
    with pytest.raises(InputError):
        m.prepare(tiny_lm)
    _assert_same(tiny_lm, before)


def test_sparsity_is_prepared_on_the_model_as_loaded(tokenizer, suite):
    """The rotations are calibrated, and keyed by the weights' hash, before the merged rows go
    on; the rows never reach the hooks (the sparse model's base logits are the same with them)."""
    from engine.lm.tiny import tiny_llama

    lm = tiny_llama(tokenizer, seed=7)  # a fresh model: no weights hash cached on it yet
    q = _query(suite)
    m = _all(suite)
    m.prepare(lm)
    try:
        cached = lm.model._tokenforge_weights_hash
        ids = torch.tensor([m.p.render_prompt(lm, q)])
        with torch.inference_mode():
            both = lm.model(input_ids=ids).logits
    finally:
        m.restore(lm)
    del lm.model._tokenforge_weights_hash
    assert weights_hash(lm.model) == cached
    alone = make_method("sparsity-rotated", sparsity=0.3, calib_tokens=CAL)
    alone.prepare(lm)
    try:
        with torch.inference_mode():
            sparse = lm.model(input_ids=ids).logits
    finally:
        alone.restore(lm)
    assert both.shape[-1] == sparse.shape[-1] + len(m.v.vocabulary(lm).merges)
    assert torch.equal(both[..., :sparse.shape[-1]], sparse)


def test_the_pruner_scores_over_the_model_vocabulary(tiny_lm, sample_text):
    """With phrase merge's rows on, the pruner's word scores are the ones it gives without."""
    fwd = make_method("baseline").forward(tiny_lm)
    plain = word_surprisal(tiny_lm, fwd, sample_text[:600])
    pm = make_method("phrase-merge")
    pm.prepare(tiny_lm)
    try:
        merged = word_surprisal(tiny_lm, fwd, sample_text[:600])
    finally:
        pm.restore(tiny_lm)
    assert merged == pytest.approx(plain, rel=1e-5, abs=1e-5)


def test_all_combined_through_the_harness(tiny_lm, tmp_path):
    """Compared with the baseline only where both tokenizations predict; the stored input is
    the pruned prompt as text; the prose row is in bits per byte with the merged encoding."""
    cfg = BenchConfig(methods=["baseline", "all-combined"], repeats=1, max_new_tokens=4,
                      warmup=False, query_ids=["qa-1", "prose-1"], params={"all-combined": SMALL})
    out = tmp_path / "runs.jsonl"
    summary = run_bench(tiny_lm, cfg, out)
    recs = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    assert summary.errors == 0
    rec = next(r for r in recs if r["method"] == "all-combined" and r["kind"] != "prose")
    base = next(r for r in recs if r["method"] == "baseline" and r["kind"] != "prose")
    assert rec["status"] == "ok" and rec["params"]["vocab.domain"].startswith("core-v1:")
    c, qd = rec["cost"], rec["quality"]
    assert c["prompt_tokens_in"] == base["cost"]["prompt_tokens_effective"]
    assert c["prompt_tokens_effective"] < qd["extra"]["prompt_tokens_pruned"] < c["prompt_tokens_in"]
    assert 1 <= qd["kl_positions"] <= qd["ref_tokens"] == base["quality"]["ref_tokens"]
    assert qd["kl_mean"] is not None and qd["ref_nll"] is not None
    assert "Document:" in qd["input"] and qd["input"].endswith("assistant\n")
    prose = next(r for r in recs if r["method"] == "all-combined" and r["kind"] == "prose")
    p = prose["quality"]
    assert prose["status"] == "ok" and p["tokens_merged"] < p["tokens_original"]
    assert p["bpb"] > 0 and p["rotated"] and p["sparsity_measured"] > 0.25


@pytest.mark.slow
def test_all_combined_on_the_bundled_model(smol_lm, suite):
    """The bundled model ties its embedding and head: during the run the two sides get their
    own appended rows, afterwards the same tied Parameter objects are back, untouched."""
    lm, q = smol_lm, _query(suite)
    model = lm.model
    params = dict(model.named_parameters(remove_duplicate=False))
    emb = model.get_input_embeddings().weight.detach().clone()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    m = _all(suite, **{"model.sparsity": 0.4, "model.calib_tokens": 2048})
    baseline = make_method("baseline")
    ref = baseline.run(lm, q, 12)
    m.prepare(lm)
    try:
        out = m.run(lm, q, 12, fixed_length=True)
        lp, pos = m.fidelity_logprobs(lm, q, ref.token_ids)
    finally:
        m.restore(lm)
    c = out.cost
    assert c["prompt_tokens_effective"] < out.extra["prompt_tokens_pruned"] < c["prompt_tokens_in"]
    assert out.extra["phrases_in_prompt"] and isinstance(out.text, str)
    assert 0.39 < out.extra["sparsity_measured"] < 0.41
    assert lp.shape == (len(pos), model.config.vocab_size) and 1 <= len(pos) <= len(ref.token_ids)
    assert pos[0] == 0 and pos == sorted(set(pos))
    after = dict(model.named_parameters(remove_duplicate=False))
    assert after.keys() == params.keys() and all(after[k] is params[k] for k in params)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert torch.equal(model.get_input_embeddings().weight, emb)
    assert not any(mod._forward_pre_hooks for mod in model.modules())
