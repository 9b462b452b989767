"""Force-and-branch over a KV cache: a forced branch continues exactly as a fresh generation
from the same ids; variants navigate as a tree; chat sessions take a branch as their answer."""
from __future__ import annotations

import pytest
import torch

from engine.errors import InputError
from engine.lm.branching import AnswerTree, show_in_session, tree_from_session
from engine.lm.chat import ChatSession
from engine.lm.forward import StandardForward, get_forward
from engine.lm.generate import generate
from engine.lm.config import SamplingConfig
from engine.lm.tokeninfo import TokenRecorder


def _prompt(tok, text="Tell me about penguins and the sea."):
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                   return_dict=False)


def _tree(lm, tok, cfg):
    ids = _prompt(tok)
    fwd = get_forward(lm)
    base = fwd.new_cache()
    fwd.logits(torch.tensor([ids[:-1]]), base, keep=1)
    tree = AnswerTree(lm, ids, base, cfg, top_k=5)
    return ids, tree


@pytest.mark.parametrize("path", ["standard", "fast"])
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_forced_branch_equals_fresh_generation(tiny_lm, tokenizer, path, temperature, monkeypatch):
    monkeypatch.setattr(tiny_lm, "engine_path", path, raising=False)
    cfg = SamplingConfig(max_new_tokens=16, temperature=temperature, top_p=1.0, seed=5)
    ids, tree = _tree(tiny_lm, tokenizer, cfg)
    root = tree.generate_root()
    assert len(root.token_ids) > 6
    p = 4
    alt = root.infos[p].alternatives[1].id  # the second most likely token there
    assert alt != root.token_ids[p]
    b = tree.force(root.id, p, alt)
    assert b.token_ids[:p] == root.token_ids[:p] and b.token_ids[p] == alt
    assert b.infos[p].forced and b.infos[p].id == alt
    fresh_cfg = SamplingConfig(**{**cfg.__dict__, "max_new_tokens": cfg.max_new_tokens - p - 1})
    fresh, _ = generate(tiny_lm, ids + root.token_ids[:p] + [alt], fresh_cfg)
    assert b.token_ids[p + 1:] == fresh.token_ids
    # and the per-token facts of the new suffix match an uncached forward
    std = StandardForward(tiny_lm.model)
    full = ids + b.token_ids
    lp = torch.log_softmax(std.logits(torch.tensor([full]), std.new_cache(), keep=0)[0], -1)
    for j, info in enumerate(b.infos):
        assert abs(info.logprob - float(lp[len(ids) + j - 1, info.id])) < 1e-4


def test_forcing_a_token_outside_the_alternatives(tiny_lm, tokenizer):
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.0)
    ids, tree = _tree(tiny_lm, tokenizer, cfg)
    root = tree.generate_root()
    kept = {a.id for a in root.infos[2].alternatives}
    tok = next(t for t in range(100, 1000) if t not in kept and t not in tiny_lm.eos_ids)
    b = tree.force(root.id, 2, tok)
    std = StandardForward(tiny_lm.model)
    full = ids + b.token_ids
    lp = torch.log_softmax(std.logits(torch.tensor([full]), std.new_cache(), keep=0)[0], -1)
    assert abs(b.infos[2].logprob - float(lp[len(ids) + 1, tok])) < 1e-4
    assert b.infos[2].rank == 0 and b.infos[2].forced
    with pytest.raises(InputError):
        tree.force(root.id, 99, tok)
    with pytest.raises(InputError):
        tree.force(root.id, 1, 10 ** 9)


def test_variants_form_a_navigable_tree(tiny_lm, tokenizer):
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.9, top_p=1.0, seed=1)
    ids, tree = _tree(tiny_lm, tokenizer, cfg)
    r0 = tree.generate_root()
    a = tree.force(r0.id, 3, r0.infos[3].alternatives[1].id)
    b = tree.force(a.id, 3, r0.infos[3].alternatives[2].id)  # a sibling of a, not a child
    assert b.parent == r0.id
    assert tree.variants(a.id, 3) == [r0.id, a.id, b.id]
    assert tree.label(b.id, 3) == "< 3/3 >"
    assert tree.step(b.id, 3, +1) == r0.id and tree.step(r0.id, 3, -1) == b.id
    c = tree.force(a.id, 7, a.infos[7].alternatives[1].id)  # deeper: a child of a
    assert c.parent == a.id and tree.variants(c.id, 3) == [r0.id, a.id, b.id]
    assert tree.label(c.id, 3) == "< 2/3 >" and tree.label(c.id, 7) == "< 2/2 >"
    assert tree.fork_points(c.id) == [3, 7]
    cfg.seed = 2
    r1 = tree.generate_root()  # regenerate: a sibling at position 0
    assert r1.parent is None and tree.variants(c.id, 0) == [r0.id, r1.id]
    assert tree.label(r1.id, 0) == "< 2/2 >" and 0 in tree.fork_points(r1.id)


def test_chat_session_continues_from_a_branch(tiny_lm, tokenizer):
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.0)
    s = ChatSession(tiny_lm, system="Be brief.", sampling=cfg)
    rec = TokenRecorder(tokenizer)
    s.send("Hello there", observe=rec)
    tree = tree_from_session(s, rec.infos)
    root = tree.branches[0]
    b = tree.force(root.id, 2, root.infos[2].alternatives[1].id)
    show_in_session(s, tree, b.id)
    assert s.turns[-1].answer_ids == b.token_ids
    s.send("And then?")
    # the conversation state equals one built from scratch with the same ids
    fwd = get_forward(tiny_lm)
    assert fwd.cache_len(s.cache) == len(s.ids) - 1
    ref, _ = generate(tiny_lm, s.ids[:len(s.ids) - len(s.turns[-1].answer_ids)],
                      SamplingConfig(max_new_tokens=10, temperature=0.0))
    assert ref.token_ids == s.turns[-1].answer_ids
    assert s.ids[:len(tree.context)] == tree.context
