"""ChatSession.regenerate: the last answer is dropped and the last user message answered again
from the rolled-back cache (forked, not re-encoded)."""
from __future__ import annotations

import pytest
import torch

from engine.lm.chat import ChatSession
from engine.errors import InputError
from engine.lm.forward import get_forward
from engine.lm.config import SamplingConfig

GREEDY = SamplingConfig(max_new_tokens=12, temperature=0.0)


def _uncached_equal(s: ChatSession) -> None:
    fwd = get_forward(s.lm)
    assert s.fwd.cache_len(s.cache) == len(s.ids) - 1
    cached = s.fwd.logits(torch.tensor([[s.ids[-1]]]), s.fwd.fork(s.cache), keep=1)
    full = fwd.logits(torch.tensor([s.ids]), fwd.new_cache(), keep=1)
    assert torch.allclose(cached, full, atol=1e-4)


def test_regenerate_greedy_gives_the_same_answer_and_exact_cache(tiny_lm):
    s = ChatSession(tiny_lm, system="Be brief.", sampling=GREEDY)
    s.send("Hello there")
    first = s.send("And a second question?")
    ids_before, n_turns = list(s.ids), len(s.turns)
    again = s.regenerate()
    assert again.token_ids == first.token_ids and again.text == first.text
    assert s.ids == ids_before and len(s.turns) == n_turns
    assert [m["role"] for m in s.messages] == ["system", "user", "assistant", "user", "assistant"]
    # only the last turn was prefilled again, not the history
    assert again.prefill_tokens < len(s.ids) - len(again.token_ids) - len(s.turns[0].answer_ids)
    _uncached_equal(s)


def test_regenerate_with_other_sampling_replaces_the_answer(tiny_lm):
    s = ChatSession(tiny_lm, sampling=GREEDY)
    s.send("Tell me something")
    sampled = s.regenerate(sampling=SamplingConfig(max_new_tokens=6, temperature=1.5, seed=7))
    assert len(s.turns) == 1 and s.turns[0].answer_ids == sampled.token_ids
    assert s.messages[-1] == {"role": "assistant", "content": sampled.text}
    _uncached_equal(s)
    s.send("next")  # the conversation goes on from the regenerated answer
    _uncached_equal(s)


def test_regenerate_without_a_turn_is_refused(tiny_lm):
    s = ChatSession(tiny_lm, sampling=GREEDY)
    with pytest.raises(InputError, match="nothing to regenerate"):
        s.regenerate()


def test_regenerate_refuses_bad_sampling_without_losing_the_turn(tiny_lm):
    s = ChatSession(tiny_lm, sampling=GREEDY)
    s.send("hi")
    before = (list(s.ids), len(s.turns))
    with pytest.raises(InputError):
        s.regenerate(sampling=SamplingConfig(max_new_tokens=0))
    assert (list(s.ids), len(s.turns)) == before
