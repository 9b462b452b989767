"""Vocabulary byte tables: byte-level BPE, SentencePiece (▁, <0xNN>) and plain; the disk cache."""
from __future__ import annotations

import json
import random

import pytest

from engine.errors import InputError
from engine.progress import CancelToken, Cancelled
from engine.advtok.vocab import Vocab, _bytes_to_unicode, build_vocab, cache_path, load_vocab
from tokbuild import plain_tokenizer, sentencepiece_tokenizer


@pytest.fixture(scope="module")
def vocab(tokenizer) -> Vocab:
    return build_vocab(tokenizer)


def test_gpt2_byte_table_is_a_bijection():
    table = _bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert table[0x20] == "\u0120" and table[0x0A] == "\u010a" and table[ord("a")] == "a"


def test_bundled_vocab_facts(vocab, tokenizer):
    assert vocab.kind == "byte_bpe"
    assert len(vocab) == len(tokenizer)
    special = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    assert set(vocab.special_ids) == special
    assert all(vocab.token_bytes[i] is None for i in special)
    assert vocab.n_tokens == len(tokenizer) - len(special)
    assert vocab.max_len == max(len(b) for b in vocab.token_bytes if b is not None)
    assert sum(len(v) for v in vocab.by_bytes.values()) == vocab.n_tokens
    # the exact byte string of a token is its key, duplicates kept in the list
    for b, ids in list(vocab.by_bytes.items())[:2000]:
        assert all(vocab.token_bytes[i] == b for i in ids)


def test_token_bytes_match_the_tokenizer(vocab, tokenizer):
    """Brute force against the tokenizer: for random ids whose bytes are valid UTF-8, decode
    agrees; for every token (partial UTF-8 included) the GPT-2 string maps back char by char."""
    table = {v: k for k, v in _bytes_to_unicode().items()}
    rng = random.Random(1)
    ids = rng.sample([i for i, b in enumerate(vocab.token_bytes) if b is not None], 1500)
    strings = tokenizer.convert_ids_to_tokens(ids)
    for i, s in zip(ids, strings):
        assert vocab.token_bytes[i] == bytes(table[c] for c in s)
        try:
            text = vocab.token_bytes[i].decode("utf-8")
        except UnicodeDecodeError:
            continue
        assert tokenizer.decode([i]) == text


def test_canonical_ids_concatenate_to_input_bytes(vocab, tokenizer):
    for text in ["Hello, world!", "café au lait", "naïve 中文", "🦜 parrot\n\ttab", "e\u0301 x"]:
        ids = tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
        assert vocab.bytes_of(ids) == text.encode("utf-8")


def test_matches_are_exact_prefixes(vocab):
    data = "Compose an email".encode()
    for i in range(len(data)):
        got = vocab.matches(data, i)
        brute = sorted((i + len(b), t) for t, b in enumerate(vocab.token_bytes)
                       if b is not None and data.startswith(b, i))
        assert sorted(got) == brute


def test_bytes_of_rejects_special_ids(vocab):
    with pytest.raises(InputError):
        vocab.bytes_of([2])


def test_sentencepiece_vocabulary():
    tok = sentencepiece_tokenizer()
    vb = build_vocab(tok)
    assert vb.kind == "sentencepiece"
    v = tok.get_vocab()
    assert vb.token_bytes[v["<0xE4>"]] == b"\xe4"
    assert vb.token_bytes[v["<0x41>"]] == b"A"
    assert vb.token_bytes[v["\u2581the"]] == b" the"
    assert vb.token_bytes[v["\u2581"]] == b" "
    assert vb.token_bytes[v["é"]] == "é".encode()
    assert all(vb.token_bytes[i] is None for i in tok.all_special_ids)
    assert vb.by_bytes[b" the"] == [v["\u2581the"]]
    # byte fallback covers any byte, so every string has a path
    ids = tok.encode("the café 🦜", add_special_tokens=False)
    assert vb.bytes_of(ids) == "the café 🦜".encode()


def test_plain_vocabulary():
    tok = plain_tokenizer()
    vb = build_vocab(tok)
    assert vb.kind == "plain"
    v = tok.get_vocab()
    assert vb.token_bytes[v["ab"]] == b"ab" and vb.token_bytes[v["é"]] == "é".encode()
    assert vb.token_bytes[v["[UNK]"]] is None


def test_cancel_and_progress(tokenizer):
    tok = CancelToken()
    tok.cancel()
    with pytest.raises(Cancelled):
        build_vocab(tokenizer, cancel=tok)
    seen = []
    build_vocab(tokenizer, progress=seen.append)
    assert seen and all(p.phase == "vocab" for p in seen)
    assert seen[-1].step == seen[-1].total and seen[-1].metrics["cache"] == "miss"


# ------------------------------------------------------------------ disk cache
@pytest.fixture()
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENFORGE_CACHE", str(tmp_path))
    return tmp_path


def test_cache_round_trip(tmp_cache, tokenizer, vocab):
    a = load_vocab(tokenizer)
    assert not a.from_cache
    path = cache_path(a.hash)
    assert path.exists() and path.parent == tmp_cache / "vocab"
    json.loads(path.read_text())  # valid JSON, never pickle
    b = load_vocab(tokenizer)
    assert b.from_cache
    assert b.token_bytes == vocab.token_bytes == a.token_bytes
    assert b.by_bytes == vocab.by_bytes and b.max_len == vocab.max_len and b.hash == vocab.hash
    # no temp files left: only the file and its integrity record
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.name + ".integrity"]


def test_hash_differs_between_tokenizers(tokenizer):
    hashes = {build_vocab(t).hash for t in (tokenizer, sentencepiece_tokenizer(), plain_tokenizer())}
    assert len(hashes) == 3


def _damage_variants(good: str, foreign: str) -> dict[str, str]:
    obj = json.loads(good)
    tampered = dict(obj)
    tampered["tokens"] = list(obj["tokens"])
    k = next(i for i, t in enumerate(obj["tokens"]) if t)
    tampered["tokens"][k] = "00" + tampered["tokens"][k]
    return {"garbage": "\x00\x01not json at all",
            "truncated": good[: len(good) // 2],
            "empty": "",
            "foreign": foreign,
            "tampered": json.dumps(tampered),
            "wrong-format": json.dumps({"format": "other", "tokens": []})}


@pytest.fixture(scope="module")
def cache_files(tokenizer, tmp_path_factory):
    """A good cache file for the bundled tokenizer and one written for another tokenizer."""
    d = tmp_path_factory.mktemp("vocabcache")
    mp = pytest.MonkeyPatch()
    mp.setenv("TOKENFORGE_CACHE", str(d))
    try:
        good = cache_path(load_vocab(tokenizer).hash).read_text()
        foreign = cache_path(load_vocab(sentencepiece_tokenizer()).hash).read_text()
    finally:
        mp.undo()
    return good, foreign


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "foreign", "tampered",
                                    "wrong-format"])
def test_corrupt_cache_is_detected_and_rebuilt(tmp_cache, tokenizer, vocab, cache_files, damage):
    good, foreign = cache_files
    path = cache_path(vocab.hash)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_damage_variants(good, foreign)[damage])
    seen = []
    again = load_vocab(tokenizer, progress=seen.append)
    assert not again.from_cache
    assert any(p.metrics.get("cache") == "corrupt" and "rebuilding" in p.message for p in seen)
    assert path.name in again.cache_note and "rebuilt" in again.cache_note  # shown by the commands
    assert again.token_bytes == vocab.token_bytes
    # the rebuilt file replaced the damaged one and is trusted next time
    assert path.read_text() == good
    trusted = load_vocab(tokenizer)
    assert trusted.from_cache and trusted.cache_note == ""


def test_cache_disabled_writes_nothing(tmp_cache, tokenizer):
    load_vocab(tokenizer, cache=False)
    assert not (tmp_cache / "vocab").exists() or not any((tmp_cache / "vocab").iterdir())


def test_large_byte_bpe_vocabulary_is_exact():
    """A 128K-token byte-level vocabulary (Llama-3 / Qwen size): every token's bytes are what its
    characters stand for in the GPT-2 alphabet, the special token is excluded, and lookups by
    bytes find each token. (Its build time is measured in bench/advtok.py, not here.)"""
    from engine.advtok.vocab import build_vocab, byte_level_bytes

    from tokbuild import byte_bpe_tokenizer

    tok = byte_bpe_tokenizer(128_000)
    vb = build_vocab(tok)
    assert vb.kind == "byte_bpe" and len(vb) == 128_001
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    assert vb.token_bytes[eot] is None and eot in vb.special_ids
    for s, i in list(tok.get_vocab().items())[::997]:
        if i != eot:
            assert vb.token_bytes[i] == byte_level_bytes(s)
            assert i in vb.by_bytes[vb.token_bytes[i]]
