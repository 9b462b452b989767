"""Per-token facts from the decoding loop, scoring pass and logit lens, checked against an
uncached forward."""
from __future__ import annotations

import pytest
import torch

from engine.lm.forward import StandardForward, get_forward
from engine.lm.generate import generate
from engine.lm.logit_lens import layer_logits, logit_lens
from engine.lm.config import SamplingConfig
from engine.lm.surprisal import score_ids
from engine.lm.tokeninfo import TokenRecorder


def _prompt(tok, text="Tell me about penguins and the sea."):
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                   return_dict=False)


def _uncached_logprobs(lm, ids):
    std = StandardForward(lm.model)
    logits = std.logits(torch.tensor([ids]), std.new_cache(), keep=0)[0]
    return torch.log_softmax(logits, -1)


@pytest.mark.parametrize("path", ["standard", "fast"])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_recorded_logprobs_equal_uncached_log_softmax(tiny_lm, tokenizer, path, temperature,
                                                      monkeypatch):
    monkeypatch.setattr(tiny_lm, "engine_path", path, raising=False)
    ids = _prompt(tokenizer)
    rec = TokenRecorder(tokenizer, top_k=5)
    res, _ = generate(tiny_lm, ids, SamplingConfig(max_new_tokens=12, temperature=temperature,
                                                   seed=3), observe=rec)
    infos = rec.infos
    assert len(infos) == len(res.token_ids) > 3
    full = ids + res.token_ids
    lp = _uncached_logprobs(tiny_lm, full)
    for j, info in enumerate(infos):
        row = lp[len(ids) + j - 1]
        assert info.id == res.token_ids[j]
        assert abs(info.logprob - float(row[info.id])) < 1e-4
        ent = float(-(row.exp() * row).sum())
        assert abs(info.entropy - ent) < 1e-3
        top = torch.topk(row, 5)
        assert [a.id for a in info.alternatives] == top.indices.tolist()
        assert all(abs(a.logprob - float(v)) < 1e-4 for a, v in zip(info.alternatives, top.values))
        if temperature == 0.0:
            assert info.rank == 1  # greedy picks the top alternative


def test_score_ids_equals_uncached_forward(tiny_lm, tokenizer):
    ids = _prompt(tokenizer)
    scored = score_ids(tiny_lm, ids, top_k=3)
    lp = _uncached_logprobs(tiny_lm, ids)
    assert scored[0].info is None and len(scored) == len(ids)
    for s in scored[1:]:
        assert abs(s.info.logprob - float(lp[s.index - 1, s.id])) < 1e-4
        assert s.surprisal_bits == pytest.approx(-s.info.logprob / 0.6931471805599453)


@pytest.mark.parametrize("tied", [False, True])
def test_logit_lens_last_layer_equals_final_logits(tokenizer, tied):
    from engine.lm.tiny import tiny_llama

    lm = tiny_llama(tokenizer, seed=1, layers=3, tied=tied)
    ids = _prompt(tokenizer)
    positions = [2, len(ids) - 1]
    lens = layer_logits(lm, ids, positions)
    assert lens.shape[:2] == (2, 3)
    fwd = get_forward(lm)
    final = fwd.logits(torch.tensor([ids]), fwd.new_cache(), keep=0)[0]
    for j, p in enumerate(positions):
        assert torch.allclose(lens[j, -1], final[p], atol=1e-4)
        assert not torch.allclose(lens[j, 0], final[p], atol=1e-2)  # earlier layers differ
    table = logit_lens(lm, ids, [positions[-1]], top_k=2)[positions[-1]]
    assert [r.layer for r in table] == [1, 2, 3]
    assert table[-1].top[0].id == int(final[positions[-1]].argmax())
