"""Saved sessions across a restart: the KV cache comes back from a snapshot, the next turn
prefills only its new tokens and its logits equal an uncached forward; a corrupt or stale
snapshot is detected and recomputed; the snapshot folder keeps to its cap."""
from __future__ import annotations

import os

import pytest
import torch

from engine.lm.chat import ChatSession
from engine.lm.forward import StandardForward, get_forward
from engine.lm.config import SamplingConfig
from engine.sessions.persist import PersistentChat
from engine.sessions.snapshot import SnapshotStore, export_kv
from engine.sessions.store import SessionStore

GREEDY = SamplingConfig(max_new_tokens=6, temperature=0.0)
MSGS = ("Hello there", "Tell me more", "And a third thing")


def _fresh(tokenizer, path: str, seed: int = 0):
    """A model as a restarted process has it: rebuilt from scratch (same seed, same weights)."""
    from engine.lm.tiny import tiny_llama

    lm = tiny_llama(tokenizer, seed=seed)
    lm.engine_path = path
    return lm


def _open(lm, tmp_path, cap=64 << 20):
    return PersistentChat(lm, "s", store=SessionStore(tmp_path / "s.db"),
                          snapshots=SnapshotStore(tmp_path / "snap", cap),
                          system="Be brief.", sampling=GREEDY)


def _first_process(tokenizer, tmp_path, path):
    chat = _open(_fresh(tokenizer, path), tmp_path)
    assert chat.report.how == "new"
    for m in MSGS[:2]:
        chat.send(m)
    chat.close()


def _reference(tokenizer, path):
    """The same conversation in one uninterrupted process."""
    s = ChatSession(_fresh(tokenizer, path), system="Be brief.", sampling=GREEDY)
    return [s.send(m) for m in MSGS]


@pytest.mark.parametrize("path", ["fast", "standard"])
def test_restart_prefills_only_new_tokens_and_logits_match(tokenizer, tmp_path, path):
    _first_process(tokenizer, tmp_path, path)
    lm = _fresh(tokenizer, path)
    chat = _open(lm, tmp_path)
    assert chat.report.how == "snapshot", chat.report
    s = chat.session
    assert type(s.fwd).__name__ == ("LeanForward" if path == "fast" else "StandardForward")
    before = list(s.ids)
    assert chat.report.restored_tokens == len(before) - 1 == s.fwd.cache_len(s.cache)

    # the restored cache gives the logits an uncached forward gives over the whole conversation
    probe = before[-1:] + list(tokenizer.encode(" probe", add_special_tokens=False))
    cached = s.fwd.logits(torch.tensor([probe]), s.fwd.fork(s.cache), keep=len(probe))
    full = StandardForward(lm.model).logits(torch.tensor([before[:-1] + probe]),
                                            StandardForward(lm.model).new_cache(), keep=len(probe))
    assert torch.allclose(cached, full, atol=1e-4), (cached - full).abs().max()

    r = chat.send(MSGS[2])
    new_turn = len(s.ids) - len(before) - r.new_tokens
    assert r.prefill_tokens == 1 + new_turn  # the last answer token + this turn's tokens only
    assert r.prefill_tokens < len(before) / 2
    ref = _reference(tokenizer, path)
    assert r.text == ref[2].text and r.prefill_tokens == ref[2].prefill_tokens
    assert [t.answer for t in chat.all_turns] == [x.text for x in ref]
    chat.close()


def _snapshot_file(tmp_path):
    files = list((tmp_path / "snap").glob("*.safetensors"))
    assert len(files) == 1  # the older snapshot of the session was replaced
    return files[0]


def _flip_data_byte(p):
    b = bytearray(p.read_bytes())
    b[-5] ^= 0x55
    p.write_bytes(bytes(b))


def _truncate(p):
    p.write_bytes(p.read_bytes()[:100])


def _other_weights(p):
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(p), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["weights_hash"] = "0" * 32
    p.write_bytes(save(tensors, metadata=meta))


def _checksum_ok_values_wrong(p):
    """A snapshot that parses and claims the right key but whose K values were altered (the
    checksum is recomputed as a forger would, so only the checksum check itself... is bypassed
    and the values still differ): caught by the checksum over the stored bytes."""
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(str(p), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k).clone() for k in f.keys()}
    tensors["k"][0, 0, 0, 0, 0] += 1.0
    p.write_bytes(save(tensors, metadata=meta))


@pytest.mark.parametrize("damage, why", [(_flip_data_byte, "checksum"), (_truncate, "truncated"),
                                         (_other_weights, "other weights"),
                                         (_checksum_ok_values_wrong, "checksum")])
def test_damaged_snapshot_is_detected_and_recomputed(tokenizer, tmp_path, damage, why):
    _first_process(tokenizer, tmp_path, "fast")
    snap = _snapshot_file(tmp_path)
    damage(snap)
    chat = _open(_fresh(tokenizer, "fast"), tmp_path)
    assert chat.report.how == "recomputed"
    assert any("rejected" in n and why in n for n in chat.report.notes), chat.report.notes
    assert not snap.exists()  # never trusted again
    before = len(chat.session.ids)
    r = chat.send(MSGS[2])
    assert r.prefill_tokens > before - 10  # the whole history was prefilled once
    assert r.text == _reference(tokenizer, "fast")[2].text
    assert _snapshot_file(tmp_path).exists()  # and a good snapshot written again
    chat.close()


def test_other_weights_reencode_from_text(tokenizer, tmp_path):
    _first_process(tokenizer, tmp_path, "fast")
    chat = _open(_fresh(tokenizer, "fast", seed=1), tmp_path)
    assert chat.report.how == "re-encoded" and "re-encoded from text" in chat.report.notes[0]
    assert [t.user for t in chat.session.turns] == list(MSGS[:2])
    r = chat.send(MSGS[2])
    assert r.new_tokens > 0
    chat.close()


def test_regenerate_is_saved_as_a_branch(tokenizer, tmp_path):
    lm = _fresh(tokenizer, "fast")
    chat = _open(lm, tmp_path)
    chat.send(MSGS[0])
    chat.regenerate(sampling=SamplingConfig(max_new_tokens=6, temperature=1.0, seed=3))
    saved = chat.store.get("s")
    assert len(saved.branches) == 2 and len(saved.turns) == 1
    assert saved.turns[0].answer == chat.session.turns[0].answer
    chat.close()


def test_snapshot_cap_removes_least_recently_used(tokenizer, tmp_path):
    lm = _fresh(tokenizer, "fast")
    fwd = get_forward(lm)
    snaps = SnapshotStore(tmp_path / "snap", cap_bytes=1 << 30)
    keys = []
    for i in range(4):
        ids = list(range(10 + i, 40 + i))
        cache = fwd.new_cache()
        fwd.logits(torch.tensor([ids]), cache)
        keys.append(snaps.save(fwd, cache, ids, "w", lm.dtype))
        t = 1_000_000 + i  # strictly increasing ages, whatever the clock resolution
        os.utime(snaps.path(keys[-1]), (t, t))
    one = snaps.path(keys[0]).stat().st_size
    snaps.cap_bytes = int(2.5 * one)
    assert snaps.enforce_cap() == keys[:2]  # oldest first, until under the cap
    assert [p.stem for p in snaps.files()] == sorted(keys[2:])
    # a load counts as a use: the loaded one outlives an older-written one
    ids2 = list(range(12, 42))
    loaded, why = snaps.load(fwd, ids2, "w", lm.dtype)
    assert loaded is not None and why == "restored from snapshot"
    k, _ = export_kv(fwd, loaded.cache)
    assert k.shape[3] == 30
    snaps.cap_bytes = int(1.5 * one)
    assert snaps.enforce_cap() == [keys[3]]


def test_weights_hash_remembered_for_a_directory(tokenizer, tmp_path):
    """The full hash is computed once per set of weight files; a new process (a fresh model
    object) gets the same value from the book, and changed files give a new one."""
    from engine.lm.model import load_model
    from engine.lm.tiny import tiny_llama
    from engine.sessions import snapshot
    from engine.sessions.snapshot import weights_hash, weights_hash_for
    from tinymodel import save_tiny

    d = save_tiny(tiny_llama(tokenizer, seed=4), tmp_path / "m")  # its own: weights replaced below
    a = load_model(str(d))
    full = weights_hash(tiny_llama(tokenizer, seed=4).model)
    assert weights_hash_for(a) == full
    b = load_model(str(d))
    calls = []
    real = snapshot.weights_hash
    snapshot.weights_hash = lambda m: calls.append(m) or real(m)
    try:
        assert weights_hash_for(b) == full and calls == []  # from the book
        tiny_llama(tokenizer, seed=5).model.save_pretrained(str(d))  # other weights, same shapes
        c = load_model(str(d))
        assert weights_hash_for(c) != full and len(calls) == 1
    finally:
        snapshot.weights_hash = real
