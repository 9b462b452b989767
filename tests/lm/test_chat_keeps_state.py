"""Issue 16.3 and 16.2 at the session level: a refused over-long message, a failed turn and a
cancel during the prefill leave the conversation exactly as it was (turns, ids, cache, and the
next answer identical to one from an untouched session); dropped turns stay in the export."""
from __future__ import annotations

import json

import pytest
import torch

from engine.errors import ContextOverflow
from engine.lm.chat import ChatSession
from engine.lm.forward import StandardForward, get_forward
from engine.lm.config import SamplingConfig
from engine.lm.tiny import tiny_llama
from engine.progress import CancelToken

GREEDY = SamplingConfig(max_new_tokens=8, temperature=0.0)


def _state(s):
    return ([(t.user, t.answer) for t in s.turns], list(s.ids), s.fwd.cache_len(s.cache))


def _exact(s, lm):
    fwd = StandardForward(lm.model)
    cached = s.fwd.logits(torch.tensor([[s.ids[-1]]]), s.fwd.fork(s.cache), keep=1)
    full = fwd.logits(torch.tensor([s.ids]), fwd.new_cache(), keep=1)
    assert torch.allclose(cached, full, atol=1e-4)


@pytest.fixture(params=["standard", "fast"])
def small_lm(request, tokenizer):
    lm = tiny_llama(tokenizer, max_positions=400)
    lm.engine_path = request.param
    get_forward(lm)
    return lm


def test_refused_message_leaves_the_session_unchanged(small_lm):
    s, twin = ChatSession(small_lm, "Sys.", GREEDY), ChatSession(small_lm, "Sys.", GREEDY)
    for m in ("first fact: the sky is green", "second fact: grass is blue"):
        s.send(m)
        twin.send(m)
    before = _state(s)
    with pytest.raises(ContextOverflow, match="even without history"):
        s.send("word " * 500)
    assert _state(s) == before and s.dropped == []
    _exact(s, small_lm)
    # the next answer is the one the untouched twin gives: the model still has every turn
    assert s.send("what was the first fact?").text == twin.send("what was the first fact?").text


def test_cancel_during_prefill_keeps_the_session(small_lm):
    s = ChatSession(small_lm, "Sys.", GREEDY)
    s.send("hello")
    before = _state(s)
    tok = CancelToken()

    def progress(p):
        if p.phase == "prefill" and p.step > 0:
            tok.cancel("user")

    r = s.send("many words " * 120, progress=progress, cancel=tok)
    assert r.stop_reason == "cancelled" and r.discarded and r.new_tokens == 0
    assert _state(s) == before
    _exact(s, small_lm)
    r2 = s.send("again")
    assert r2.stop_reason != "cancelled" and len(s.turns) == 2


def test_dropped_turns_are_kept_for_the_export(tokenizer):
    lm = tiny_llama(tokenizer, max_positions=160)
    s = ChatSession(lm, system="Sys.", sampling=SamplingConfig(max_new_tokens=10, temperature=0.0))
    for i in range(6):
        r = s.send(f"message number {i} with some words to fill the context window up")
    assert r.dropped_turns > 0 and len(s.dropped) + len(s.turns) == 6
    data = json.loads(s.to_json())["result"]["turns"]
    assert [t["user"][:16] for t in data] == [f"message number {i}" for i in range(6)]
    assert [bool(t.get("dropped")) for t in data] == [True] * len(s.dropped) + [False] * len(s.turns)
    assert "dropped from the model's context" in s.to_markdown()
