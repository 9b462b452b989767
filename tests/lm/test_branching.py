"""The conversation's variants tree (ChatSession.nodes, navigated by engine.lm.branching): a forced
answer continues exactly as a fresh generation from the same ids; regenerate, force and edit work
at any live turn; variants navigate as a tree; showing another path and continuing equals a
conversation built from scratch."""
from __future__ import annotations

import pytest
import torch

from engine.errors import InputError
from engine.lm import branching as br
from engine.lm.chat import ChatSession
from engine.lm.forward import StandardForward, get_forward
from engine.lm.generate import generate
from engine.lm.config import SamplingConfig


def _logprobs(lm, ids):
    std = StandardForward(lm.model)
    return torch.log_softmax(std.logits(torch.tensor([ids]), std.new_cache(), keep=0)[0], -1)


def _consistent(s: ChatSession) -> None:
    """The live state is what a session built from the path's text would hold, and the cache
    holds a prefix of it."""
    assert s.ids == s._rebuild(s.turns)
    assert s.fwd.cache_len(s.cache) <= len(s.ids)


@pytest.mark.parametrize("path", ["standard", "fast"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_forced_answer_equals_fresh_generation(tiny_lm, path, temperature, monkeypatch):
    monkeypatch.setattr(tiny_lm, "engine_path", path, raising=False)
    cfg = SamplingConfig(max_new_tokens=16, temperature=temperature, top_p=1.0, seed=5)
    s = ChatSession(tiny_lm, sampling=cfg)
    s.send("Tell me about penguins and the sea.")
    root = s.turns[-1]
    assert len(root.answer_ids) > 6 and len(root.infos) == len(root.answer_ids)
    context = s.ids[:len(s.ids) - len(root.answer_ids)]
    p = 4
    alt = root.infos[p].alternatives[1].id  # the second most likely token there
    assert alt != root.answer_ids[p]
    r = s.force(0, p, alt)
    b = s.turns[-1]
    assert b is not root and b.how == "force" and b.source == root.id and b.fork_at == p
    assert b.answer_ids[:p] == root.answer_ids[:p] and b.answer_ids[p] == alt
    assert r.token_ids == b.answer_ids and r.text == b.answer
    assert b.infos[p].forced and b.infos[p].id == alt
    fresh_cfg = SamplingConfig(**{**cfg.__dict__, "max_new_tokens": cfg.max_new_tokens - p - 1})
    fresh, _ = generate(tiny_lm, context + root.answer_ids[:p] + [alt], fresh_cfg)
    assert b.answer_ids[p + 1:] == fresh.token_ids
    # only the token before it (its row gives the forced token's facts), the forced token and
    # the new suffix went through the model
    assert r.prefill_tokens == 2
    # the per-token facts match an uncached forward
    lp = _logprobs(tiny_lm, context + b.answer_ids)
    for j, info in enumerate(b.infos):
        assert abs(info.logprob - float(lp[len(context) + j - 1, info.id])) < 1e-4
    _consistent(s)


def test_forcing_a_token_outside_the_alternatives(tiny_lm):
    s = ChatSession(tiny_lm, sampling=SamplingConfig(max_new_tokens=10, temperature=0.0))
    s.send("Tell me about penguins and the sea.")
    root = s.turns[-1]
    context = s.ids[:len(s.ids) - len(root.answer_ids)]
    kept = {a.id for a in root.infos[2].alternatives}
    tok = next(t for t in range(100, 1000) if t not in kept and t not in tiny_lm.eos_ids)
    s.force(0, 2, tok)
    b = s.turns[-1]
    lp = _logprobs(tiny_lm, context + b.answer_ids)
    assert abs(b.infos[2].logprob - float(lp[len(context) + 1, tok])) < 1e-4
    assert b.infos[2].rank == 0 and b.infos[2].forced
    with pytest.raises(InputError):
        s.force(0, 99, tok)
    with pytest.raises(InputError):
        s.force(0, 1, 10 ** 9)
    with pytest.raises(InputError, match="already there"):
        s.force(0, 1, b.answer_ids[1])


def test_variants_form_a_navigable_tree(tiny_lm):
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.9, top_p=1.0, seed=1)
    s = ChatSession(tiny_lm, sampling=cfg)
    s.send("Tell me about penguins and the sea.")
    r0 = s.turns[-1]
    s.force(0, 3, r0.infos[3].alternatives[1].id)
    a = s.turns[-1]
    s.force(0, 3, r0.infos[3].alternatives[2].id)  # from a, at the same place: a sibling of a
    b = s.turns[-1]
    n = s.nodes
    assert b.source == r0.id and br.variants(n, a.id, 3) == [r0.id, a.id, b.id]
    assert br.label(n, b.id, 3) == "< 3/3 >"
    assert br.step(n, b.id, 3, +1) == r0.id and br.step(n, r0.id, 3, -1) == b.id
    s.show(a.id)
    assert s.turns[-1] is a
    s.force(0, 7, a.infos[7].alternatives[1].id)  # deeper: a child of a
    c = s.turns[-1]
    assert c.source == a.id and br.variants(n, c.id, 3) == [r0.id, a.id, b.id]
    assert br.label(n, c.id, 3) == "< 2/3 >" and br.label(n, c.id, 7) == "< 2/2 >"
    assert br.fork_points(n, c.id) == [3, 7]
    s.regenerate(sampling=SamplingConfig(**{**cfg.__dict__, "seed": 2}))  # a sibling at position 0
    r1 = s.turns[-1]
    assert r1.source is None and r1.how == "regenerate" and br.variants(n, c.id, 0) == [r0.id, r1.id]
    assert br.label(n, r1.id, 0) == "< 2/2 >" and 0 in br.fork_points(n, r1.id)
    assert [t.id for t in s.children(None)] == [r0.id, a.id, b.id, c.id, r1.id]
    _consistent(s)


def test_variants_at_a_middle_turn_and_switching_paths(tiny_lm):
    """Regenerate, force and edit at turn 1 of 3; show an old path again; continuing from any
    path equals a fresh conversation with the same ids."""
    greedy = SamplingConfig(max_new_tokens=8, temperature=0.0)
    s = ChatSession(tiny_lm, system="Be brief.", sampling=greedy)
    for m in ("Hello there", "Tell me more", "And a third thing"):
        s.send(m)
    t0, t1, t2 = s.turns
    s.regenerate(1, sampling=SamplingConfig(max_new_tokens=8, temperature=1.2, seed=3))
    regen = s.turns[-1]
    assert [t.id for t in s.turns] == [t0.id, regen.id] and regen.prev == t0.id
    _consistent(s)
    s.force(1, 2, regen.infos[2].alternatives[1].id)
    forced = s.turns[-1]
    assert forced.source == regen.id and forced.fork_at == 2
    s.edit(1, "Tell me less")
    edited = s.turns[-1]
    assert edited.user == "Tell me less" and edited.how == "edit"
    assert br.turn_variants(s.nodes, edited.id) == [t1.id, regen.id, forced.id, edited.id]
    assert br.variants(s.nodes, edited.id, 0) == [t1.id, regen.id, edited.id]
    # back to the first path: the turns after turn 1 come back with it
    s.show(t1.id)
    assert [t.id for t in s.turns] == [t0.id, t1.id, t2.id]
    _consistent(s)
    r = s.send("A fourth one")
    ref, _ = generate(tiny_lm, s.ids[:len(s.ids) - len(r.token_ids)], greedy)
    assert ref.token_ids == r.token_ids
    # and from the forced path
    s.show(forced.id)
    assert [t.id for t in s.turns] == [t0.id, forced.id]
    r = s.send("Go on")
    ref, _ = generate(tiny_lm, s.ids[:len(s.ids) - len(r.token_ids)], greedy)
    assert ref.token_ids == r.token_ids
    assert s.fwd.cache_len(s.cache) == len(s.ids) - 1
    fwd = get_forward(tiny_lm)
    cached = s.fwd.logits(torch.tensor([[s.ids[-1]]]), s.fwd.fork(s.cache), keep=1)
    full = fwd.logits(torch.tensor([s.ids]), fwd.new_cache(), keep=1)
    assert torch.allclose(cached, full, atol=1e-4)


def test_a_cancel_before_the_answer_adds_no_variant(tiny_lm):
    from engine.progress import CancelToken

    s = ChatSession(tiny_lm, sampling=SamplingConfig(max_new_tokens=6, temperature=0.0))
    s.send("Hello there")
    s.send("Tell me more")
    before = ([t.id for t in s.turns], len(s.nodes), list(s.ids))
    tok = CancelToken()
    tok.cancel("user")
    for call in (lambda: s.regenerate(0, cancel=tok), lambda: s.force(0, 1, 5, cancel=tok)):
        try:
            r = call()
            assert r.discarded
        except Exception as e:  # a cancel seen before any work raises Cancelled
            assert type(e).__name__ == "Cancelled"
        assert ([t.id for t in s.turns], len(s.nodes), list(s.ids)) == before
