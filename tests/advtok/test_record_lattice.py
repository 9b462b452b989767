"""A dataset row's lattice rebuilt from its results record with the loaded tokenizer
(engine/advtok/record_lattice.py): the paths are the recorded ids on the recorded request text;
a record from another tokenizer, another chat template, or (without a recorded tokenizer) other
weights is refused with one sentence instead of drawn wrong. The record comes from a real
dataset run on the tiny model; the rows are benign synthetic requests."""
from __future__ import annotations

import json

import pytest

from engine.advtok.record_lattice import RecordLatticeError, record_paths


@pytest.fixture(scope="module")
def record(tiny_lm, tmp_path_factory):
    from engine.advtok.datasets import read_benchmark
    from engine.advtok.evalrun import run_rows
    from engine.advtok.records import read_results
    from engine.advtok.search import AttackConfig

    d = tmp_path_factory.mktemp("rl")
    bench = d / "rows.jsonl"
    bench.write_text(json.dumps({"id": "tea", "request": "Describe a cup of green tea",
                                 "response": "Sure, here is"}) + "\n", encoding="utf-8")
    out = d / "results.jsonl"
    summ = run_rows(tiny_lm, read_benchmark(bench), lambda r: AttackConfig(
        request=r.request, response=r.response, iters=2, samples=0).validate(), [], out)
    assert summ.done == 1
    return read_results(out).records[0]


def test_paths_are_the_recorded_ids_on_the_recorded_text(tiny_lm, record):
    from engine.advtok.lattice import TokenLattice
    from engine.advtok.vocab import load_vocab

    vocab = load_vocab(tiny_lm.tokenizer)
    assert record["tokenizer"]["vocab_hash"] == vocab.hash
    p = record_paths(tiny_lm, record, vocab=vocab)
    assert p.row == "tea" and p.notes == []
    assert p.text == record["request_text"]
    assert p.canonical == record["canonical_ids"] and p.adversarial == record["best_ids"]
    for ids in (p.canonical, p.adversarial):
        assert "".join(p.tokens(ids)) == p.text
        spans = p.char_spans(ids)
        assert spans[0][0] == 0 and spans[-1][1] == len(p.text)
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    # the same geometry as the attack screen's editable lattice of that request
    lat = TokenLattice(tiny_lm, record["request"], record["response"], record["system"],
                       vocab=vocab)
    assert lat.text == p.text and lat.canonical == p.canonical
    assert lat.char_spans(p.adversarial) == p.char_spans(p.adversarial)


def test_another_tokenizer_is_refused(tiny_lm, record):
    rec = dict(record, tokenizer={"vocab_hash": "0" * 64, "kind": "byte_bpe"})
    with pytest.raises(RecordLatticeError, match="another tokenizer.*load that model"):
        record_paths(tiny_lm, rec)


def test_other_weights_same_tokenizer_draws_and_says_so(tiny_lm, record):
    rec = dict(record, model=dict(record["model"], weights_hash="f" * 32, name="other-model"))
    p = record_paths(tiny_lm, rec)
    assert p.adversarial == record["best_ids"]
    assert len(p.notes) == 1 and "other weights (other-model" in p.notes[0]


def test_without_a_recorded_tokenizer_the_weights_decide(tiny_lm, record):
    old = {k: v for k, v in record.items() if k != "tokenizer"}
    assert record_paths(tiny_lm, old).canonical == record["canonical_ids"]   # same weights
    with pytest.raises(RecordLatticeError, match="does not name its tokenizer"):
        record_paths(tiny_lm, dict(old, model=dict(old["model"], weights_hash="f" * 32)))


def test_another_template_or_ids_that_do_not_spell_the_request_are_refused(tiny_lm, record):
    with pytest.raises(RecordLatticeError, match="frames the request differently"):
        record_paths(tiny_lm, dict(record, request_text="<other>" + record["request_text"]))
    with pytest.raises(RecordLatticeError, match="adversarial token ids do not spell"):
        record_paths(tiny_lm, dict(record, best_ids=record["best_ids"][:-1]))
    with pytest.raises(RecordLatticeError, match="no request and token ids"):
        record_paths(tiny_lm, dict(record, canonical_ids=[]))
