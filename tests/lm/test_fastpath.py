"""The lean forward (engine/lm/fastpath.py) against the standard Hugging Face forward: logits equal
(atol 1e-4 fp32) for prefill, decode, batched padded decode and prefix-cached scoring; identical
greedy answers; other Llama-family configs (qwen2 biases, mistral, llama3 RoPE); unsupported models
fall back; the weight modes (fused, adopted, split mat-vec, head modes). Cache semantics:
test_fastcache.py."""
from __future__ import annotations

import pytest
import torch

from engine.lm.fastpath import LeanForward, make_lean_forward, unsupported_reason
from engine.lm.forward import StandardForward, get_forward
from engine.lm.generate import generate
from engine.lm.model import from_parts
from engine.lm.config import SamplingConfig
from lean_helpers import (FAMILIES, PROMPTS, assert_close as _close, chat_ids as _chat, lean_pair as _pair,
                          tiny_of as _tiny_of)


def _prefill_decode(std, lean, ids, steps=6):
    cs, cl = std.new_cache(), lean.new_cache()
    a, b = std.logits(ids, cs, keep=0), lean.logits(ids, cl, keep=0)
    _close(a, b)
    nxt = a[:, -1:].argmax(-1)
    for _ in range(steps):
        a, b = std.logits(nxt, cs), lean.logits(nxt, cl)
        _close(a, b)
        nxt = a[:, -1:].argmax(-1)
    assert std.cache_len(cs) == lean.cache_len(cl)
    assert std.cache_bytes(cs) == lean.cache_bytes(cl)


# ---- tiny model: every entry point ----------------------------------------------------------
def test_prefill_and_decode_equal_standard_tiny(tiny_lm, tokenizer):
    std, lean = _pair(tiny_lm)
    for text in PROMPTS:
        _prefill_decode(std, lean, torch.tensor([_chat(tokenizer, text)]))


def test_batched_padded_decode_equals_standard_tiny(tiny_lm, tokenizer):
    std, lean = _pair(tiny_lm)
    _batched_check(std, lean, tokenizer)


def _batched_check(std, lean, tok, solo=True):
    pre = torch.tensor([tok.encode("Question: what is the capital of France?")])
    sufs = [tok.encode(s) for s in (" Answer: Paris is", " It is", " The answer, surely, is")]
    b, t, p = len(sufs), max(map(len, sufs)), pre.shape[1]
    ids = torch.zeros(b, t, dtype=torch.long)
    am = torch.ones(b, p + t, dtype=torch.long)
    pos = torch.full((b, t), p, dtype=torch.long)
    for r, s in enumerate(sufs):
        pad = t - len(s)
        ids[r, pad:] = torch.tensor(s)
        am[r, p:p + pad] = 0
        pos[r, pad:] = torch.arange(p, p + len(s))
    cs, cl = std.new_cache(), lean.new_cache()
    std.logits(pre, cs)
    lean.logits(pre, cl)
    cs, cl = std.repeat(cs, b), lean.repeat(cl, b)
    a = std.logits(ids, cs, position_ids=pos, attention_mask=am, keep=1)
    c = lean.logits(ids, cl, position_ids=pos, attention_mask=am, keep=1)
    _close(a, c)
    m, q = am, pos[:, -1:]
    for _ in range(4):
        nxt = a[:, -1:].argmax(-1)
        m = torch.cat([m, torch.ones(b, 1, dtype=torch.long)], 1)
        q = q + 1
        a = std.logits(nxt, cs, position_ids=q, attention_mask=m)
        c = lean.logits(nxt, cl, position_ids=q, attention_mask=m)
        _close(a, c)
    # each padded row equals its own unpadded solo run
    for r, s in enumerate(sufs if solo else []):
        solo = lean.new_cache()
        lean.logits(pre, solo)
        out = lean.logits(torch.tensor([s]), solo, keep=1)
        _close(out[0], lean.logits(ids[r:r + 1], _row_cache(lean, pre), position_ids=pos[r:r + 1],
                                   attention_mask=am[r:r + 1], keep=1)[0])


def _row_cache(f, pre):
    c = f.new_cache()
    f.logits(pre, c)
    return c


def test_cached_scoring_hidden_head_equals_standard_tiny(tiny_lm, tokenizer):
    """AdvTok-style scoring: prefix cached once, each candidate tail fed on a fork; only the
    scored positions go through the head."""
    std, lean = _pair(tiny_lm)
    prefix = torch.tensor([_chat(tokenizer, "Summarise the sea in one line.")])
    tails = [tokenizer.encode(t) for t in (" The sea is vast.", " Waves.", " Salt water everywhere, always.")]
    ps, pl = std.new_cache(), lean.new_cache()
    std.logits(prefix, ps)
    lean.logits(prefix, pl)
    for tail in tails:
        x = torch.tensor([tail])
        hs = std.hidden(x, std.fork(ps))
        hl = lean.hidden(x, lean.fork(pl))
        _close(hs, hl)
        _close(std.head(hs[:, :-1]), lean.head(hl[:, :-1]))
    assert lean.cache_len(pl) == prefix.shape[1]  # forks never grew the prefix cache


def test_greedy_200_tokens_identical_tiny(tiny_lm, tokenizer):
    cfg = SamplingConfig(max_new_tokens=200, temperature=0.0)
    eos, tiny_lm.eos_ids = tiny_lm.eos_ids, []  # all 200 tokens, no early stop
    try:
        for text in PROMPTS:
            ids = _chat(tokenizer, text)
            got = {}
            for path in ("standard", "fast"):
                tiny_lm.engine_path = path
                res, _ = generate(tiny_lm, ids, cfg)
                got[path] = res.token_ids
            assert len(got["fast"]) == 200
            assert got["fast"] == got["standard"]
    finally:
        tiny_lm.eos_ids = eos
        tiny_lm.engine_path = "fast"


def test_get_forward_switch(tiny_lm):
    tiny_lm.engine_path = "standard"
    assert get_forward(tiny_lm).name == "standard"
    tiny_lm.engine_path = "fast"
    assert get_forward(tiny_lm).name == "fast"
    assert isinstance(get_forward(tiny_lm), LeanForward)


# ---- other Llama-family configurations --------------------------------------------------------
@pytest.mark.parametrize("kind,extra", FAMILIES)
def test_family_variants_equal_standard(tokenizer, kind, extra):
    lm = _tiny_of(kind, tokenizer, **extra)
    assert unsupported_reason(lm.model) is None
    std, lean = _pair(lm)
    _prefill_decode(std, lean, torch.tensor([_chat(tokenizer, PROMPTS[0])]), steps=3)
    _batched_check(std, lean, tokenizer)


def test_fused_projections_equal_standard(tiny_lm, tokenizer):
    std = StandardForward(tiny_lm.model)
    lean = make_lean_forward(tiny_lm.model, fuse=True)
    assert lean.extra_weight_bytes > 0
    _prefill_decode(std, lean, torch.tensor([_chat(tokenizer, PROMPTS[0])]), steps=3)


def test_unsupported_models_fall_back(tokenizer, caplog):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = from_parts(GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2)),
                      tokenizer, name="tiny-gpt2-fallback")
    assert make_lean_forward(gpt2.model) is None
    gpt2.engine_path = "fast"
    with caplog.at_level("INFO", logger="engine"):
        assert get_forward(gpt2).name == "standard"
        gpt2._forward = None  # a second lookup (e.g. after switching paths) logs nothing more
        assert get_forward(gpt2).name == "standard"
    said = [r.getMessage() for r in caplog.records if "fast path does not support" in r.getMessage()]
    assert len(said) == 1 and "gpt2" in said[0], said
    mistral_sw = _tiny_of("mistral", tokenizer, sliding_window=32)
    assert "sliding" in unsupported_reason(mistral_sw.model)
    dyn = _tiny_of("llama", tokenizer, rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0,
                                                         "factor": 2.0})
    assert "dynamic" in unsupported_reason(dyn.model)


# ---- the bundled model ------------------------------------------------------------------------
def test_bundled_logits_equal_standard(smol_lm):
    std, lean = _pair(smol_lm)
    tok = smol_lm.tokenizer
    _prefill_decode(std, lean, torch.tensor([_chat(tok, PROMPTS[0])]), steps=4)
    _batched_check(std, lean, tok, solo=False)


def test_bundled_greedy_200_identical(smol_lm):
    """200 greedy tokens on the lean path; the standard path agrees on every one of them: its
    own ``generate`` for the first 40 (the same loop, step by step) and, for all 200, the argmax
    of one teacher-forced standard forward over prompt + answer (one prefill instead of 200
    standard decode steps keeps the test quick; a near-tie would fail it, never pass it)."""
    ids = _chat(smol_lm.tokenizer, "Write a short story about a lighthouse keeper.")
    eos, smol_lm.eos_ids = smol_lm.eos_ids, []
    try:
        smol_lm.engine_path = "fast"
        fast = generate(smol_lm, ids, SamplingConfig(max_new_tokens=200, temperature=0.0))[0].token_ids
        smol_lm.engine_path = "standard"
        std40 = generate(smol_lm, ids, SamplingConfig(max_new_tokens=40, temperature=0.0))[0].token_ids
    finally:
        smol_lm.eos_ids = eos
        smol_lm.engine_path = "fast"
    assert len(fast) == 200 and fast[:40] == std40
    std = StandardForward(smol_lm.model)
    full = torch.tensor([ids + fast[:-1]])
    logits = std.logits(full, std.new_cache(), keep=200)
    assert logits[0].argmax(-1).tolist() == fast


@pytest.mark.parametrize("attention", ["matmul", "sdpa"])
def test_decode_attention_options_equal_standard(tiny_lm, tokenizer, attention):
    """Both q_len-1 kernels (SDPA, the default, and matmul/softmax/matmul) are exact."""
    std = StandardForward(tiny_lm.model)
    lean = make_lean_forward(tiny_lm.model, decode_attention=attention)
    assert lean.decode_attention == attention
    assert make_lean_forward(tiny_lm.model).decode_attention == "sdpa"
    _prefill_decode(std, lean, torch.tensor([_chat(tokenizer, PROMPTS[1])]), steps=3)
    _batched_check(std, lean, tokenizer, solo=False)


def test_head_modes(tiny_lm):
    _, lean = _pair(tiny_lm)
    assert lean.head_mode == "exact"  # the default is the exact head
    h = torch.randn(2, 5, tiny_lm.config.hidden_size)
    exact = lean.head(h)
    _close(exact, StandardForward(tiny_lm.model).head(h))
    lean.set_head_mode("chunked")
    _close(lean.head(h), exact)
    lean.set_head_mode("int8")
    approx = lean.head(h)
    assert approx.shape == exact.shape and approx.dtype == torch.float32
    rel = ((approx - exact).norm() / exact.norm()).item()
    assert 0 < rel < 0.05  # approximate (so never the default), but close


@pytest.mark.parametrize("fuse", [False, True, "adopt"])
def test_weight_edits_are_seen(tokenizer, fuse):
    """Methods prune or swap weights on the shared model: the lean path must follow, in place
    (mul_) and by rebinding (.data =), fused copies included."""
    lm = _tiny_of("llama", tokenizer)
    std = StandardForward(lm.model)
    lean = make_lean_forward(lm.model, fuse=fuse)
    ids = torch.tensor([_chat(tokenizer, PROMPTS[1])])
    lean.logits(ids, lean.new_cache())
    with torch.no_grad():
        lm.model.model.layers[0].mlp.up_proj.weight.mul_(0.5)
        q = lm.model.model.layers[1].self_attn.q_proj
        q.weight.data = q.weight.data * 2.0
    _close(std.logits(ids, std.new_cache(), keep=0), lean.logits(ids, lean.new_cache(), keep=0))


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_split_matvec_equals_linear_and_standard(tiny_lm, tokenizer, threads):
    """The row-split matrix-vector products (one block per intra-op thread) give the standard
    path's logits for decode, batched padded decode and scoring, and the linear option's too."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        std = StandardForward(tiny_lm.model)
        split = make_lean_forward(tiny_lm.model, matvec="split")
        plain = make_lean_forward(tiny_lm.model, matvec="linear")
        assert split.linear.parts == min(threads, 8)
        ids = torch.tensor([_chat(tokenizer, PROMPTS[2])])
        _prefill_decode(std, split, ids, steps=4)
        _batched_check(std, split, tokenizer, solo=False)
        cs, cp = split.new_cache(), plain.new_cache()
        a, b = split.logits(ids, cs), plain.logits(ids, cp)
        for _ in range(5):
            _close(a, b)
            nxt = a[:, -1:].argmax(-1)
            a, b = split.logits(nxt, cs), plain.logits(nxt, cp)
        # a row count above SPLIT_MAX_ROWS and an odd output size both take F.linear
        x = torch.randn(40, split.hidden_size)
        w = torch.randn(7, split.hidden_size)
        _close(split.linear(x, w), torch.nn.functional.linear(x, w))
        _close(split.linear(x[:3], w), torch.nn.functional.linear(x[:3], w))
    finally:
        torch.set_num_threads(saved)


def test_matvec_option_validated(tiny_lm):
    with pytest.raises(ValueError):
        make_lean_forward(tiny_lm.model, matvec="nope")


def _storage_bytes(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        st = p.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
    return total


def test_adopted_fusion_keeps_one_copy_of_every_weight(tokenizer):
    """The CPU default fuses Q/K/V and gate/up by rebinding the HF weights to row blocks of one
    buffer: no extra bytes, both paths read the same memory, and a second lean forward on the
    same model reuses the buffers instead of rebinding again."""
    lm = _tiny_of("llama", tokenizer)
    before = _storage_bytes(lm.model)
    ids = torch.tensor([_chat(tokenizer, PROMPTS[0])])
    ref = StandardForward(lm.model).logits(ids, StandardForward(lm.model).new_cache(), keep=0)
    lean = make_lean_forward(lm.model)
    assert lean.fused == "adopt" and lean.extra_weight_bytes == 0
    assert _storage_bytes(lm.model) == before
    a = lm.model.model.layers[0].self_attn
    L = lean.layers[0]
    assert a.q_proj.weight.untyped_storage().data_ptr() == L.wqkv.untyped_storage().data_ptr()
    assert torch.equal(L.wqkv, torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
    std = StandardForward(lm.model)
    _close(std.logits(ids, std.new_cache(), keep=0), ref)  # the HF path is unchanged by adoption
    _prefill_decode(std, lean, ids, steps=3)
    params = [id(p) for p in lm.model.parameters()]
    again = make_lean_forward(lm.model)
    assert [id(p) for p in lm.model.parameters()] == params and again.extra_weight_bytes == 0
    _close(again.logits(ids, again.new_cache(), keep=0), lean.logits(ids, lean.new_cache(), keep=0))


def test_fuse_option_validated(tiny_lm):
    with pytest.raises(ValueError):
        make_lean_forward(tiny_lm.model, fuse="sometimes")


@pytest.mark.parametrize("path", ["standard", "fast"])
def test_stacked_caches_resume_each_row_exactly(tiny_lm, tokenizer, path):
    """Caches of different lengths stacked into one batch (right-aligned, pads masked) continue
    each row as its own cache would; the sources are not changed."""
    fwd = StandardForward(tiny_lm.model) if path == "standard" else make_lean_forward(tiny_lm.model)
    seqs = [tokenizer.encode(t) for t in ("Short one.", "A somewhat longer prompt than that.", "Hi")]
    caches, outs = [], []
    for s in seqs:
        c = fwd.new_cache()
        fwd.logits(torch.tensor([s]), c)
        caches.append(c)
        solo = fwd.fork(c)
        outs.append(fwd.logits(torch.tensor([[7, 9]]), solo, keep=2)[0])
    before = [fwd.logits(torch.tensor([[5]]), fwd.fork(c))[0, -1] for c in caches]
    keeps = [len(s) for s in seqs]
    L = max(keeps)
    st = fwd.stack([(c, n) for c, n in zip(caches, keeps)])
    mask = torch.tensor([[0] * (L - n) + [1] * (n + 2) for n in keeps])
    pos = torch.tensor([[n, n + 1] for n in keeps])
    got = fwd.logits(torch.tensor([[7, 9]] * 3), st, position_ids=pos, attention_mask=mask, keep=2)
    for u in range(3):
        _close(got[u], outs[u])
    after = [fwd.logits(torch.tensor([[5]]), fwd.fork(c))[0, -1] for c in caches]
    for a, b in zip(before, after):
        assert torch.equal(a, b)
