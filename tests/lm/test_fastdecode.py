"""The lean forward's decode step (engine/lm/fastdecode.py): bit for bit the general layer loop's
logits — batch 1 and padded batches, every supported family, both attention kernels, one and two
threads — and a bounded number of ops per layer; the RoPE table equals HF's rotation exactly."""
from __future__ import annotations

import pytest
import torch

from engine.lm.fastdecode import rope_table
from engine.lm.fastpath import make_lean_forward
from lean_helpers import FAMILIES, PROMPTS, chat_ids, tiny_of


def _pair(model, **kw):
    """A lean forward that takes the torch decode step and one held to the general loop (the
    compiled batch-1 step is off on both: tests/lm/test_nativestep.py compares it)."""
    step = make_lean_forward(model, native=False, **kw)
    general = make_lean_forward(model, native=False, **kw)
    general._stepping = False
    return step, general


def _same_run(step, general, tok):
    """Prefill, 4 batch-1 steps, then 3 rows padded to one length decoding 3 steps: every
    logit equal (torch.equal, not a tolerance)."""
    ids = torch.tensor([chat_ids(tok, PROMPTS[0])])
    ca, cb = step.new_cache(), general.new_cache()
    a, b = step.logits(ids, ca), general.logits(ids, cb)
    assert torch.equal(a, b)
    for _ in range(4):
        nxt = a[:, -1:].argmax(-1)
        a, b = step.logits(nxt, ca), general.logits(nxt, cb)
        assert torch.equal(a, b)
    assert step._steps and not general._steps  # the step ran on one side only
    n = ca.length
    ra, rb = step.repeat(ca, 3), general.repeat(cb, 3)
    mask = torch.ones(3, n + 1, dtype=torch.long)
    mask[1, :5] = 0  # row 1 sees a shorter history, as a padded row does
    pos = torch.full((3, 1), n)
    nxt = torch.tensor([[5], [6], [7]])
    for _ in range(3):
        a = step.logits(nxt, ra, position_ids=pos, attention_mask=mask)
        b = general.logits(nxt, rb, position_ids=pos, attention_mask=mask)
        assert torch.equal(a, b)
        nxt, pos = a[:, -1:].argmax(-1), pos + 1
        mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("attention", ["sdpa", "matmul"])
def test_decode_step_equals_general_loop_tiny(tiny_lm, tokenizer, threads, attention):
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _same_run(*_pair(tiny_lm.model, decode_attention=attention), tokenizer)
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("kind,extra", FAMILIES)
def test_decode_step_equals_general_loop_families(tokenizer, kind, extra):
    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # the split products (biases included)
    try:
        _same_run(*_pair(tiny_of(kind, tokenizer, **extra).model), tokenizer)
    finally:
        torch.set_num_threads(saved)


def test_decode_step_ops_per_layer(tokenizer):
    """The point of the step: few dispatched ops per layer (23 today) and a fixed number around
    them. Counted from the profiler's top-level aten calls, so independent of machine speed."""
    from torch.profiler import ProfilerActivity, profile

    from engine.lm.tiny import tiny_llama

    counts = {}
    for layers in (2, 6):
        lean = make_lean_forward(tiny_llama(tokenizer, layers=layers).model, native=False)
        cache = lean.new_cache()
        nxt = lean.logits(torch.tensor([[1, 2, 3]]), cache)[:, -1:].argmax(-1)
        nxt = lean.logits(nxt, cache)[:, -1:].argmax(-1)  # buffers made
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            lean.logits(nxt, cache)
        counts[layers] = sum(1 for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::"))
    per_layer = (counts[6] - counts[2]) / 4
    assert per_layer <= 23, counts
    assert counts[2] - 2 * per_layer <= 30, counts


def test_decode_step_only_for_fp32(tiny_lm):
    """Reduced-precision activations are normed in fp32 by HF: those models keep the general loop."""
    lean = make_lean_forward(tiny_lm.model)
    assert lean._decode_step(1) is not None
    lean.dtype = torch.bfloat16
    assert lean._decode_step(1) is None


def test_rope_table_equals_hf_rotation():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(0)
    d, n = 16, 40
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2).float() / d))
    freqs = torch.arange(n).float()[:, None] * inv[None]
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = emb.cos(), emb.sin()
    q, k = torch.randn(1, 3, n, d), torch.randn(1, 2, n, d)
    hq, hk = apply_rotary_pos_emb(q, k, cos[None], sin[None])
    rot = rope_table(cos, sin)  # (n, 2, 2, d/2)
    for x, ref in ((q, hq), (k, hk)):
        y = x.transpose(1, 2).reshape(1, n, -1, 1, 2, d // 2) * rot[None, :, None]  # (1, n, heads, 2, 2, d/2)
        got = y.sum(-2).reshape(1, n, -1, d).transpose(1, 2)
        assert torch.equal(got, ref)


def test_concurrent_callers_do_not_share_buffers(tiny_lm, tokenizer):
    """Two threads decoding on one forward (each its own cache) get what each gets alone: the
    step's buffers are per calling thread."""
    import threading

    lean = make_lean_forward(tiny_lm.model)
    prompts = [torch.tensor([chat_ids(tokenizer, p)]) for p in PROMPTS[:2]]

    def decode(ids, out):
        c = lean.new_cache()
        x = lean.logits(ids, c)
        for _ in range(30):
            out.append(x)
            x = lean.logits(x[:, -1:].argmax(-1), c)

    alone = [[], []]
    for ids, out in zip(prompts, alone):
        decode(ids, out)
    together = [[], []]
    ts = [threading.Thread(target=decode, args=(ids, out)) for ids, out in zip(prompts, together)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for a, b in zip(alone, together):
        assert len(a) == len(b) == 30 and all(torch.equal(x, y) for x, y in zip(a, b))
