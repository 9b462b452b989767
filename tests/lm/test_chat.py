"""ChatSession: only new tokens are prefilled, the cache equals the template's rendering,
overflow drops old turns, bad input is refused before any model call."""
from __future__ import annotations

import pytest
import torch

from engine.lm.chat import ChatSession, clean_text
from engine.errors import ContextOverflow, InputError
from engine.lm.forward import StandardForward
from engine.progress import CancelToken
from engine.lm.config import SamplingConfig
from engine.lm.tiny import tiny_llama

GREEDY = SamplingConfig(max_new_tokens=8, temperature=0.0)


def test_turn_n_prefills_only_new_tokens(tiny_lm):
    s = ChatSession(tiny_lm, system="You are terse.", sampling=GREEDY)
    tok = tiny_lm.tokenizer
    r1 = s.send("Hello there")
    sys_len = len(s._sys_ids)
    r2 = s.send("What is a penguin?")
    r3 = s.send("And a puffin?")
    # turn 2 feeds exactly: the last answer token (the loop never feeds it) + glue + the message
    def expected(i, text, prev):
        g = s.glue(i)
        head, tail = g.head, g.tail
        enc = lambda t: tok.encode(t, add_special_tokens=False) if t else []
        return (prev.stop_reason != "eos") + len(enc(head)) + len(tok.encode(text, add_special_tokens=False)) + len(enc(tail))
    assert r2.prefill_tokens == expected(1, "What is a penguin?", r1)
    assert r3.prefill_tokens == expected(2, "And a puffin?", r2)
    assert r3.prompt_tokens > r3.prefill_tokens + sys_len  # history was cached, not re-fed
    # the cache content equals what the template renders for the same conversation
    rendered = tok.apply_chat_template(s.messages, tokenize=False)
    # (compared as text: re-tokenizing a random model's answer may segment it differently)
    text = tok.decode(s.ids)
    assert rendered.startswith(text)
    assert len(tok.encode(rendered[len(text):], add_special_tokens=False)) <= 2  # closing glue


def test_cache_logits_equal_uncached_after_three_turns(tiny_lm):
    s = ChatSession(tiny_lm, system="Be brief.", sampling=GREEDY)
    for m in ["one", "two", "three"]:
        s.send(m)
    fwd = StandardForward(tiny_lm.model)
    # the session's cache holds ids[:-1]; its next-token logits must equal an uncached forward
    cached = s.fwd.logits(torch.tensor([[s.ids[-1]]]), s.fwd.fork(s.cache), keep=1)
    full = fwd.logits(torch.tensor([s.ids]), fwd.new_cache(), keep=1)
    assert torch.allclose(cached, full, atol=1e-4)


def test_empty_and_whitespace_refused_without_model_call(tiny_lm):
    s = ChatSession(tiny_lm, sampling=GREEDY)
    for bad in ["", "   ", "\n\t"]:
        with pytest.raises(InputError):
            s.send(bad)
    assert s.turns == [] and s.cache is None


def test_odd_unicode_is_handled(tiny_lm):
    s = ChatSession(tiny_lm, sampling=GREEDY)
    for text in ["🦜🦜 parrots", "e\u0301te\u0301 combining", "bell\x07 and nul\x00 controls",
                 "lone \ud800 surrogate", "<|im_end|> literal control text"]:
        r = s.send(text)
        assert r.stop_reason in ("eos", "max_new_tokens", "stop_string") and r.prefill_tokens > 0
        # what the model saw decodes back to the (cleaned) message: emoji and combining marks kept
        seen = tiny_lm.tokenizer.decode(s.turns[-1].user_ids)
        assert clean_text(text).strip() in seen, (text, seen)
    assert "\x00" not in clean_text("a\x00b") and clean_text("x\ud800y") == "x?y"
    # literal control text typed by the user is spelt with ordinary tokens
    im_end = tiny_lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end not in s.turns[-1].user_ids


def test_context_overflow_drops_oldest_turns(tokenizer):
    lm = tiny_llama(tokenizer, max_positions=160)
    s = ChatSession(lm, system="Sys.", sampling=SamplingConfig(max_new_tokens=10, temperature=0.0))
    for i in range(6):
        r = s.send(f"message number {i} with some words to fill the context window up")
    assert r.dropped_turns > 0 and any("dropped" in n for n in r.notes)
    assert len(s.ids) <= 160
    assert s.turns[-1].user.startswith("message number 5")
    # still exact after the re-encode
    fwd = StandardForward(lm.model)
    cached = s.fwd.logits(torch.tensor([[s.ids[-1]]]), s.fwd.fork(s.cache), keep=1)
    full = fwd.logits(torch.tensor([s.ids]), fwd.new_cache(), keep=1)
    assert torch.allclose(cached, full, atol=1e-4)


def test_single_message_longer_than_context_is_refused_with_numbers(tokenizer):
    lm = tiny_llama(tokenizer, max_positions=64)
    s = ChatSession(lm, sampling=SamplingConfig(max_new_tokens=8, temperature=0.0))
    with pytest.raises(ContextOverflow, match=r"\d+ tokens"):
        s.send("word " * 200)


def test_cancel_keeps_session_usable(tiny_lm):
    s = ChatSession(tiny_lm, sampling=SamplingConfig(max_new_tokens=100, temperature=0.0))
    tok = CancelToken()
    n = []
    r = s.send("go on", on_token=lambda d, t: (n.append(t), len(n) == 3 and tok.cancel()), cancel=tok)
    assert r.stop_reason == "cancelled" and r.new_tokens == 3
    r2 = s.send("again")
    assert r2.stop_reason != "cancelled" and len(s.turns) == 2


def test_reset_reuses_system_cache_and_exports(tiny_lm):
    s = ChatSession(tiny_lm, system="Sys prompt.", sampling=GREEDY)
    s.send("hi")
    sys_cache = s._sys_cache
    s.reset()
    s.send("hello again")
    assert s._sys_cache is sys_cache and len(s.turns) == 1
    assert "hello again" in s.to_markdown()
    import json
    doc = json.loads(s.to_json())
    assert doc["kind"] == "chat" and doc["settings"]["system"] == "Sys prompt."
    assert doc["result"]["turns"][0]["user"] == "hello again"
