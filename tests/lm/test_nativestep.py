"""The compiled batch-1 decode step (engine/lm/nativestep.py, engine/lm/native/decode_step.c).

It sums each product in its own order, so its logits are not bit-equal to the torch step's: they
must give the same greedy tokens over several prompts and stay within ``ATOL`` (1e-4, the bound
every lean path keeps against the standard forward) of the torch step at every step. Across
thread counts it is bit-identical (each output row is one thread's dot product, whatever the
split). Without a compiler, or with a kernel that does not build, the torch step runs."""
from __future__ import annotations

import pytest
import torch

from engine.lm import nativestep
from engine.lm.fastpath import make_lean_forward
from lean_helpers import ATOL, FAMILIES, PROMPTS, chat_ids, tiny_of

needs_kernel = pytest.mark.skipif(nativestep.library() is None,
                                  reason=f"no native kernel here: {nativestep.unavailable_reason()}")


@pytest.fixture
def fresh_kernel_state(monkeypatch):
    """nativestep as if nothing had been tried in this process (restored afterwards)."""
    monkeypatch.setattr(nativestep, "_state", {})


def _threads(n):
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    return saved


def _greedy(fwd, tok, prompt, steps=24):
    """Greedy tokens and the logits of every step."""
    cache = fwd.new_cache()
    x = fwd.logits(torch.tensor([chat_ids(tok, prompt)]), cache)
    toks, logits = [], []
    for _ in range(steps):
        nxt = x[:, -1:].argmax(-1)
        toks.append(int(nxt))
        x = fwd.logits(nxt, cache)
        logits.append(x)
    return toks, logits


def _compare(model, tok, threads):
    saved = _threads(threads)
    try:
        native = make_lean_forward(model)
        torch_step = make_lean_forward(model, native=False)
        for p in PROMPTS:
            ta, la = _greedy(native, tok, p)
            tb, lb = _greedy(torch_step, tok, p)
            assert ta == tb, p
            err = max((a - b).abs().max().item() for a, b in zip(la, lb))
            assert err <= ATOL, (p, err)
        assert native._native_step() is not None  # the kernel ran on one side only
        assert torch_step._native_step() is None and torch_step._steps
    finally:
        torch.set_num_threads(saved)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
def test_native_step_matches_torch_step_tiny(tiny_lm, tokenizer, threads):
    _compare(tiny_lm.model, tokenizer, threads)


@needs_kernel
@pytest.mark.parametrize("kind,extra", FAMILIES)
def test_native_step_matches_torch_step_families(tokenizer, kind, extra):
    """Q/K/V biases (qwen2), llama3 RoPE scaling, attention and MLP biases."""
    _compare(tiny_of(kind, tokenizer, **extra).model, tokenizer, 2)


@needs_kernel
def test_native_step_head_in_the_same_call(tiny_lm, tokenizer):
    """``logits`` of a batch-1 step computes the exact head inside the kernel; ``hidden`` +
    ``head`` (the torch head) give the same logits within ATOL, and other head modes keep
    their own kernel."""
    lean = make_lean_forward(tiny_lm.model)
    ids = torch.tensor([chat_ids(tokenizer, PROMPTS[0])])
    ca = lean.new_cache()
    lean.logits(ids, ca)
    cb = lean.fork(ca)
    nxt = torch.tensor([[7]])
    fused = lean.logits(nxt, ca)
    split = lean.head(lean.hidden(nxt, cb))
    assert fused.shape == split.shape == (1, 1, lean.w_head.shape[0])
    assert (fused - split).abs().max().item() <= ATOL
    lean.set_head_mode("chunked")
    cc = lean.fork(cb, cb.length - 1)
    assert (lean.logits(nxt, cc) - split).abs().max().item() <= ATOL


@needs_kernel
def test_native_step_same_bits_at_any_thread_count(tiny_lm, tokenizer):
    lean = make_lean_forward(tiny_lm.model)
    out = {}
    for n in (1, 2, 3):
        saved = _threads(n)
        try:
            out[n] = _greedy(lean, tokenizer, PROMPTS[1], steps=12)
        finally:
            torch.set_num_threads(saved)
    for n in (2, 3):
        assert out[n][0] == out[1][0]
        assert all(torch.equal(a, b) for a, b in zip(out[n][1], out[1][1]))


@needs_kernel
def test_native_step_long_context_grows_cache_and_scratch(tokenizer):
    """Past the cache's first capacity (64) and the scratch's first size: still the torch
    step's tokens and logits within ATOL."""
    model = tiny_of("llama", tokenizer).model
    native, torch_step = make_lean_forward(model), make_lean_forward(model, native=False)
    ta, la = _greedy(native, tokenizer, PROMPTS[2], steps=90)
    tb, lb = _greedy(torch_step, tokenizer, PROMPTS[2], steps=90)
    assert ta == tb
    assert max((a - b).abs().max().item() for a, b in zip(la, lb)) <= ATOL


@needs_kernel
def test_native_step_dispatches_no_per_layer_ops(tokenizer):
    """The layer loop is one call: the aten ops a step dispatches do not grow with layers."""
    from torch.profiler import ProfilerActivity, profile

    from engine.lm.tiny import tiny_llama

    counts = {}
    for layers in (2, 6):
        lean = make_lean_forward(tiny_llama(tokenizer, layers=layers).model)
        cache = lean.new_cache()
        nxt = lean.logits(torch.tensor([[1, 2, 3]]), cache)[:, -1:].argmax(-1)
        nxt = lean.logits(nxt, cache)[:, -1:].argmax(-1)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            lean.logits(nxt, cache)
        names = [e.name for e in prof.events()]
        assert nativestep.PROFILE_NAME in names
        counts[layers] = sum(1 for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::"))
    assert counts[6] == counts[2], counts


@needs_kernel
def test_step_profile_names_the_native_step(tiny_lm):
    from engine.lm.stepprofile import decode_step_profile

    p = decode_step_profile(tiny_lm, "fast", steps=4, prompt_ids=[1, 2, 3, 4])
    assert p.native_step_ms > 0 and p.layer_matmul_ms == 0


@needs_kernel
@pytest.mark.parametrize("native", [True, False])
def test_out_of_range_token_is_refused(tiny_lm, native):
    """The kernel never reads past the embedding: the same IndexError as the torch lookup."""
    lean = make_lean_forward(tiny_lm.model, native=native)
    cache = lean.new_cache()
    lean.logits(torch.tensor([[1, 2, 3]]), cache)
    for bad in (lean.embed.shape[0], -1):
        with pytest.raises(IndexError):
            lean.logits(torch.tensor([[bad]]), lean.fork(cache))


def test_padded_and_batched_steps_keep_the_torch_step(tiny_lm, tokenizer):
    """Only unmasked batch-1 steps take the kernel; a masked or several-row step runs the torch
    step and equals a forward without the kernel bit for bit."""
    a, b = make_lean_forward(tiny_lm.model), make_lean_forward(tiny_lm.model, native=False)
    ids = torch.tensor([chat_ids(tokenizer, PROMPTS[0])] * 2)
    ca, cb = a.new_cache(), b.new_cache()
    assert torch.equal(a.logits(ids, ca), b.logits(ids, cb))
    nxt = torch.tensor([[5], [6]])
    assert torch.equal(a.logits(nxt, ca), b.logits(nxt, cb))


def test_no_compiler_falls_back_to_the_torch_step(tiny_lm, tokenizer, monkeypatch, fresh_kernel_state):
    monkeypatch.setattr(nativestep, "_compiler", lambda: None)
    lean = make_lean_forward(tiny_lm.model)
    assert lean._native_step() is None
    assert "no C compiler" in nativestep.unavailable_reason()
    ref = make_lean_forward(tiny_lm.model, native=False)
    ta, la = _greedy(lean, tokenizer, PROMPTS[0], steps=6)
    tb, lb = _greedy(ref, tokenizer, PROMPTS[0], steps=6)
    assert ta == tb and all(torch.equal(x, y) for x, y in zip(la, lb))
    assert lean._steps  # the torch step ran


def test_env_switch_turns_the_kernel_off(monkeypatch, fresh_kernel_state):
    monkeypatch.setenv(nativestep.ENV, "0")
    assert nativestep.library() is None
    assert nativestep.unavailable_reason() == f"{nativestep.ENV}=0"


def test_unwritable_cache_falls_back_then_recovers(tmp_path, monkeypatch, fresh_kernel_state):
    """A cache folder the kernel cannot be built in leaves the torch step for that folder only:
    pointed back at a usable cache, the same process gets the kernel."""
    if nativestep._compiler() is None:
        pytest.skip("no C compiler here")
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("TOKENFORGE_CACHE", str(blocked))
    assert nativestep.library() is None and nativestep.unavailable_reason()
    monkeypatch.setenv("TOKENFORGE_CACHE", str(tmp_path / "ok"))
    assert nativestep.library() is not None and nativestep.unavailable_reason() is None


def test_compile_error_falls_back_and_leaves_no_file(tmp_path, monkeypatch, fresh_kernel_state):
    if nativestep._compiler() is None:
        pytest.skip("no C compiler here")
    bad = tmp_path / "decode_step.c"
    bad.write_text("this is not C;\n")
    monkeypatch.setattr(nativestep, "SOURCE", bad)
    monkeypatch.setenv("TOKENFORGE_CACHE", str(tmp_path / "cache"))
    assert nativestep.library() is None
    assert "failed" in nativestep.unavailable_reason()
    assert list((tmp_path / "cache" / "native").iterdir()) == []  # no .so, no temporary, no lock


def test_kernel_is_built_once_into_the_cache(tmp_path, monkeypatch, fresh_kernel_state):
    if nativestep._compiler() is None:
        pytest.skip("no C compiler here")
    monkeypatch.setenv("TOKENFORGE_CACHE", str(tmp_path))
    assert nativestep.library() is not None
    built = list((tmp_path / "native").glob("decode_step-*.so"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    monkeypatch.setattr(nativestep, "_state", {})
    monkeypatch.setattr(nativestep, "_build", lambda *a: pytest.fail("rebuilt a cached kernel"))
    assert nativestep.library() is not None
    assert built[0].stat().st_mtime_ns == mtime


# ---- the bundled model ------------------------------------------------------------------------
@needs_kernel
def test_bundled_native_greedy_equals_hf_generate(smol_lm, monkeypatch):
    """The path chat takes (``generate`` on the fast path, the kernel in use) gives HF
    ``generate``'s greedy tokens on several prompts, and the kernel's logits stay within ATOL of
    the torch step's at every one of those steps."""
    from engine.lm.config import SamplingConfig
    from engine.lm.forward import get_forward
    from engine.lm.generate import generate

    tok = smol_lm.tokenizer
    prompts = [*PROMPTS, "Write a short story about a lighthouse keeper."]
    monkeypatch.setattr(smol_lm, "eos_ids", [])  # always 32 tokens, as HF's min_new_tokens
    monkeypatch.setattr(smol_lm, "engine_path", "fast", raising=False)
    fwd = get_forward(smol_lm)
    for p in prompts:
        ids = chat_ids(tok, p)
        ours = generate(smol_lm, ids, SamplingConfig(max_new_tokens=32, temperature=0.0))[0].token_ids
        hf = smol_lm.model.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False)
        assert ours == hf[0, len(ids):].tolist(), p
    assert fwd._native_step() is not None
    torch_step = make_lean_forward(smol_lm.model, native=False)
    ta, la = _greedy(fwd, tok, prompts[0], steps=16)
    tb, lb = _greedy(torch_step, tok, prompts[0], steps=16)
    assert ta == tb
    assert max((a - b).abs().max().item() for a, b in zip(la, lb)) <= ATOL
