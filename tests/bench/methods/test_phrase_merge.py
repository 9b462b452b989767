"""Phrase merge (AdaptiVocab-style, untrained): merges learned greedily by count × (n − 1) and
applied in order; merged ids decode back to their text exactly (also while streaming); new rows
follow the exponential weighting (input heavy at the last part, output at the first), checked
against a brute-force sum; with no merges the method is the baseline bit for bit; fidelity is
compared only where both tokenizations predict the same next token; each suite's domain
material is held out from what it measures."""
from __future__ import annotations

import json
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as hs

from engine.errors import InputError
from engine.bench.methods import make_method
from engine.bench.methods.base import Query, render_chat
from engine.bench.methods.phrase_vocab import (MergedDetokenizer, PhraseVocab,
                                               _count_nonoverlapping, fold_to_base,
                                               learn_phrases)
from engine.bench.suite import load_suite
from engine.lm.templates import encode_user_text
from engine.lm.textstream import TextStream
from engine.lm.tiny import tiny_llama

CAL = ("The cat sat on the mat. The cat sat on the mat again. "
       "In the morning the cat sat on the mat, and in the evening the dog sat by the door. ") * 3
WORDS = ["the", "cat", "sat", "on", "mat", "dog", "door", "morning", "evening", "and", "in",
         "by", "again", "The", "In", "Où", "naïve", "42", "!", "?", ",", "."]


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


def test_digit_only_ngrams_are_not_phrases(tokenizer):
    text = "Call 4417 now. Call 4417 now. Code 4417 4417 4417 4417."
    v = learn_phrases(tokenizer, text, len(tokenizer), max_phrases=20)
    for k in range(len(v.merges)):
        assert not tokenizer.decode(v.parts(v.new_id(k))).strip().isdigit()


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


@pytest.fixture(scope="module")
def cal_vocab(tokenizer):
    return learn_phrases(tokenizer, CAL, len(tokenizer), max_phrases=12)


@settings(max_examples=80, deadline=None)
@given(hs.lists(hs.sampled_from(WORDS), max_size=30), hs.sampled_from([" ", "  ", "\n", ""]))
def test_merge_then_detokenise_round_trips_text(tokenizer, cal_vocab, words, sep):
    """Text → base ids → merges → the decode path (at once, and streamed token by token as the
    generation loop does) gives the text back exactly."""
    text = sep.join(words)
    base = encode_user_text(tokenizer, text)
    assert tokenizer.decode(base, skip_special_tokens=True) == text  # the tokenizer round-trips
    merged = cal_vocab.encode_ids(base)
    detok = MergedDetokenizer(tokenizer, cal_vocab)
    assert detok.decode(merged, skip_special_tokens=True) == text
    stream = TextStream(detok, live=True)
    shown = "".join(stream.push(t)[0] for t in merged) + stream.flush()
    assert shown == text and stream.final_text == text


def test_merges_apply_to_the_measured_text(tokenizer, cal_vocab):
    base = encode_user_text(tokenizer, "In the morning the cat sat on the mat.")
    assert len(cal_vocab.encode_ids(base)) <= len(base) - 3


def _brute_row(weight, parts, heavy_end):
    """sum_k w_k * row_k with w_k = 0.5 ** (distance from the heavy end), normalised."""
    n = len(parts)
    raw = [0.5 ** ((n - 1 - k) if heavy_end else k) for k in range(n)]
    tot = sum(raw)
    row = [0.0] * weight.shape[1]
    for k, p in enumerate(parts):
        for j in range(weight.shape[1]):
            row[j] += raw[k] / tot * float(weight[p, j])
    return torch.tensor(row, dtype=torch.float64)


@pytest.mark.parametrize("tied", [False, True])
def test_exponential_init_equals_brute_force_and_restore_is_exact(tiny_lm, tied_lm, tokenizer,
                                                                  tied):
    lm = tied_lm if tied else tiny_lm
    emb0, head0 = lm.model.get_input_embeddings(), lm.model.get_output_embeddings()
    assert (head0.weight is emb0.weight) is tied
    probe = encode_user_text(tokenizer, "The cat sat on the mat.")
    fwd = make_method("baseline").forward(lm)
    before = fwd.logits(torch.tensor([probe]), fwd.new_cache(), keep=0)[0]
    n_tok = len(tokenizer)
    m = make_method("phrase-merge", calibration=CAL, max_phrases=6)
    m.prepare(lm)
    try:
        v = m.vocab
        V = v.base_size
        assert any(len(v.parts(v.new_id(k))) >= 3 for k in range(len(v.merges)))
        emb, head = lm.model.get_input_embeddings(), lm.model.get_output_embeddings()
        h = torch.randn(1, emb0.weight.shape[1])
        logits = head(h)
        assert logits.shape[-1] == V + len(v.merges)
        assert torch.equal(logits[0, :V], head0(h)[0])
        for k in range(len(v.merges)):
            new = v.new_id(k)
            parts = v.parts(new)
            want_in = _brute_row(emb0.weight.detach(), parts, heavy_end=True)
            want_out = _brute_row(head0.weight.detach(), parts, heavy_end=False)
            got_in = emb(torch.tensor([[new]]))[0, 0].double()
            assert torch.allclose(got_in, want_in, rtol=1e-5, atol=1e-7)
            assert torch.allclose(head.extra[k].double(), want_out, rtol=1e-5, atol=1e-7)
            assert torch.allclose(logits[0, new].double(), h[0].double() @ want_out, atol=1e-4)
            if len(parts) > 1:  # the two sides weight the parts differently, tied or not
                assert not torch.allclose(got_in, want_out)
        enc = m.encode(lm, "The cat sat on the mat.")
        assert len(enc) < len(probe)
        assert m.decode(lm, enc) == "The cat sat on the mat."
    finally:
        m.restore(lm)
    assert lm.model.get_input_embeddings() is emb0 and lm.model.get_output_embeddings() is head0
    assert len(tokenizer) == n_tok and encode_user_text(tokenizer, "The cat sat on the mat.") == probe
    after = fwd.logits(torch.tensor([probe]), fwd.new_cache(), keep=0)[0]
    assert torch.equal(after, before)


def test_mean_init_is_the_ablation(tiny_lm):
    m = make_method("phrase-merge", calibration=CAL, max_phrases=4, init="mean")
    emb0 = tiny_lm.model.get_input_embeddings()
    with m.active(tiny_lm):
        v = m.vocab
        parts = v.parts(v.new_id(0))
        got = tiny_lm.model.get_input_embeddings().extra[0]
        assert torch.allclose(got, emb0.weight[parts].mean(0), atol=1e-6)
    assert m.params["init"] == "mean"


QS = [Query(id="c", kind="chat", prompt="The cat sat on the mat. Where did the cat sit?",
            system="You are terse."),
      Query(id="d", kind="qa", prompt="Who sat by the door?",
            document="In the evening the dog sat by the door.", reference="the dog")]


@pytest.mark.parametrize("q", QS, ids=lambda q: q.id)
def test_no_merges_is_the_baseline_bit_for_bit(tiny_lm, tokenizer, q):
    """max_phrases=0 (or material with nothing repeated): every measured call gives exactly the
    baseline's numbers, through the wrapped embedding and head."""
    base = make_method("baseline")
    for m in (make_method("phrase-merge", max_phrases=0),
              make_method("phrase-merge", calibration="One two three four five six.")):
        with m.active(tiny_lm):
            assert m.vocab.merges == []
            assert type(tiny_lm.model.get_input_embeddings()).__name__ == "ExtendedEmbedding"
            out, ref = m.run(tiny_lm, q, 6), base.run(tiny_lm, q, 6)
            assert out.token_ids == ref.token_ids and out.text == ref.text
            assert m.render_prompt(tiny_lm, q) == base.render_prompt(tiny_lm, q)
            lp, pos = m.fidelity_logprobs(tiny_lm, q, ref.token_ids)
            blp, bpos = base.fidelity_logprobs(tiny_lm, q, ref.token_ids)
            assert pos == bpos and torch.equal(lp, blp)
            assert m.answer_nll(tiny_lm, q, "the dog") == base.answer_nll(tiny_lm, q, "the dog")
            a = m.nll_bits_per_byte(tiny_lm, CAL)
            b = base.nll_bits_per_byte(tiny_lm, CAL)
            assert a["nll"] == b["nll"] and a["bpb"] == b["bpb"] and a["tokens_saved_pct"] == 0


@settings(max_examples=40, deadline=None)
@given(hs.integers(1, 6), hs.lists(hs.lists(hs.integers(0, 7), min_size=2, max_size=3),
                                   min_size=1, max_size=4), hs.integers(0, 2 ** 31 - 1))
def test_fold_to_base_is_the_next_base_token_marginal(rows, merges, seed):
    v = PhraseVocab(base_size=8, merges=[tuple(g) for g in merges])
    g = torch.Generator().manual_seed(seed)
    lp = torch.log_softmax(torch.randn(rows, 8 + len(merges), generator=g), dim=-1)
    folded = fold_to_base(lp, v)
    assert folded.shape == (rows, 8)
    p = lp.double().exp()
    for r in range(rows):
        for t in range(8):
            want = p[r, t] + sum(p[r, 8 + k] for k in range(len(merges)) if merges[k][0] == t)
            assert abs(float(folded[r, t].double().exp()) - float(want)) < 1e-6
    assert torch.allclose(folded.exp().sum(-1), torch.ones(rows), atol=1e-5)


def test_fidelity_compares_only_boundary_positions(tiny_lm, tokenizer):
    m = make_method("phrase-merge", calibration=CAL, max_phrases=8)
    q = QS[0]
    ref = encode_user_text(tokenizer, " The cat sat on the mat, and the dog sat by the door.")
    lp, pos = m.fidelity_logprobs(tiny_lm, q, ref)
    v = m.vocab
    merged = v.encode_ids(ref)
    assert len(merged) < len(ref) and len(pos) == len(merged) == lp.shape[0]
    starts, at = [], 0
    for t in merged:
        starts.append(at)
        at += len(v.parts(t))
    assert pos == starts and at == len(ref)
    assert lp.shape[1] == v.base_size
    assert torch.allclose(lp.exp().sum(-1), torch.ones(len(pos)), atol=1e-4)
    full = m.teacher_forced_logprobs(tiny_lm, q, merged)
    assert full.shape == (len(merged), v.base_size + len(v.merges))
    assert torch.equal(fold_to_base(full, v), lp)


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
    used = out.extra["phrases_in_prompt"]
    assert sum(used.values()) == len(
        [t for t in m.render_prompt(tiny_lm, q) if t >= m.vocab.base_size]) > 0
    assert " sat on the mat" in used
    nll = m.answer_nll(tiny_lm, q, "The cat sat on the mat.")
    assert nll is not None and nll > 0
    assert isinstance(tiny_lm.model.get_input_embeddings(), torch.nn.Embedding)


def test_merged_ids_generated_decode_through_the_loop(tiny_lm, tokenizer):
    """A generation that picks new ids: the loop's text (stop strings, streaming) is the
    expansion's text. The head is biased toward one new id to make the model choose it."""
    m = make_method("phrase-merge", calibration=CAL, max_phrases=4)
    q = QS[0]
    with m.active(tiny_lm):
        head = tiny_lm.model.get_output_embeddings()
        saved = head.extra.clone()
        head.extra[0] = head.extra[0] * 0 + 50.0 * torch.sign(torch.randn_like(head.extra[0]))
        try:
            out = m.run(tiny_lm, q, 4)
        finally:
            head.extra.copy_(saved)
    v = m.vocab
    assert out.extra["new_tokens_generated"] >= 1
    assert out.text == tokenizer.decode(v.expand(out.token_ids), skip_special_tokens=True)
    assert out.extra["output_base_tokens"] == len(v.expand(out.token_ids))


# ---- the suites' domain material --------------------------------------------------------------
def _sentences(text):
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", text or "") if len(s.split()) >= 5]


@pytest.mark.parametrize("suite", ["core-v1", "seed-v1"])
def test_domain_material_is_held_out(suite):
    s = load_suite(suite)
    assert len(s.domain) >= 10 and s.domain_sha
    blob = "\n".join(t for q in s.domain for t in (q.prompt, q.document or "", q.reference or ""))
    measured = [t for q in s.queries for t in (q.prompt, q.document, q.reference, *q.turns,
                                               *q.meta.get("replies", [])) if t]
    measured += [s.prose or ""]
    for t in measured:  # a one-word answer ("forty") may well occur in other text
        assert len(t.strip()) < 12 or t.strip() not in blob
        for sent in _sentences(t):
            assert sent not in blob, sent


def test_domain_leak_is_refused(tmp_path):
    src = load_suite("core-v1")
    lines = (src.path.read_text().splitlines())
    (tmp_path / "mine.jsonl").write_text("\n".join(lines[:3]) + "\n")
    (tmp_path / "domain").mkdir()
    q = json.loads(lines[1])
    (tmp_path / "domain" / "mine.jsonl").write_text(
        json.dumps({"prompt": "Say hello.", "reply": "Hello."}) + "\n"
        + json.dumps({"prompt": q["prompt"], "reply": "No."}) + "\n")
    with pytest.raises(InputError, match="measured query"):
        load_suite(str(tmp_path / "mine.jsonl"))
    (tmp_path / "domain" / "mine.jsonl").write_text(json.dumps({"reply": "x"}) + "\n")
    with pytest.raises(InputError, match="prompt"):
        load_suite(str(tmp_path / "mine.jsonl"))


def test_merges_are_learned_from_the_suite_domain(tiny_lm, tokenizer):
    s = load_suite("core-v1", ids=["qa-1"])
    m = make_method("phrase-merge")
    m.use_suite(s)
    assert m.params["domain"] == f"core-v1:{s.domain_sha}"
    q = s.queries[0]
    base = render_chat(tokenizer, m.messages(q, q.document))
    merged = m.render_prompt(tiny_lm, q)
    assert len(merged) < 0.9 * len(base)
    assert m.vocab.expand(merged) == base
    explicit = make_method("phrase-merge", calibration=CAL)
    explicit.use_suite(s)  # an explicit text wins over the suite's material
    assert explicit.params["domain"].startswith("text:")


@pytest.mark.parametrize("kw", [dict(max_phrases=-1), dict(min_count=1), dict(max_n=1),
                                dict(calibration="  "), dict(init="gauss")])
def test_bad_params(kw):
    with pytest.raises(InputError):
        make_method("phrase-merge", **kw)


def test_labelled_untrained():
    m = make_method("phrase-merge")
    assert "UNTRAINED" in m.label and "untrained" in m.simplification


def test_harness_compares_comparable_positions(tiny_lm, tmp_path):
    """Through the real harness: with no merges the fidelity is exactly the baseline's (KL 0 at
    every position); the default row learns from core-v1's domain, says so, and saves tokens."""
    from engine.bench.harness import BenchConfig, run_bench

    cfg = BenchConfig(methods=["baseline", "phrase-merge"], repeats=1, max_new_tokens=4,
                      warmup=False, query_ids=["qa-1"],
                      params={"phrase-merge": {"max_phrases": 0}})
    out = tmp_path / "zero.jsonl"
    run_bench(tiny_lm, cfg, out)
    recs = {r["method"]: r for r in map(json.loads, out.read_text().splitlines())}
    q = recs["phrase-merge"]["quality"]
    assert recs["phrase-merge"]["status"] == "ok"
    assert q["kl_mean"] == 0.0 and q["kl_max"] == 0.0 and q["top1_agree"] == 1.0
    assert q["kl_positions"] == q["ref_tokens"] == recs["baseline"]["quality"]["ref_tokens"]
    assert q["ref_nll"] == recs["baseline"]["quality"]["ref_nll"]

    cfg = BenchConfig(methods=["baseline", "phrase-merge"], repeats=1, max_new_tokens=4,
                      warmup=False, query_ids=["qa-1"])
    out = tmp_path / "domain.jsonl"
    run_bench(tiny_lm, cfg, out)
    rec = [r for r in map(json.loads, out.read_text().splitlines()) if r["method"] == "phrase-merge"][0]
    assert rec["status"] == "ok" and "UNTRAINED" in rec["label"]
    assert rec["params"]["domain"].startswith("core-v1:")
    c = rec["cost"]
    assert c["prompt_tokens_effective"] < 0.9 * c["prompt_tokens_in"]
    assert 1 <= rec["quality"]["kl_positions"] <= rec["quality"]["ref_tokens"]


@pytest.mark.parametrize("name", ["prune-selfinfo+kv-fp8", "all-combined"])
def test_combinations_pass_the_suite_to_every_part(name):
    """The harness tells each method which suite it measures; a combination tells its parts."""
    m = make_method(name)
    parts = list(m.parts.values()) if hasattr(m, "parts") else [m.p, m.c]
    seen = []
    for part in parts:
        part.use_suite = lambda suite, part=part: seen.append((part.name, suite))
    m.use_suite("core-v1")
    assert seen == [(p.name, "core-v1") for p in parts]
    assert len(seen) == (4 if name == "all-combined" else 2)
