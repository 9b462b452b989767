"""The manual decoding loop: exactness against uncached forwards and HF generate, stop rules,
seeding, cancellation, batch samples."""
from __future__ import annotations

import threading

import pytest
import torch

from engine.errors import ContextOverflow, InputError
from engine.lm.forward import StandardForward, get_forward
from engine.lm.generate import generate, generate_batch
from engine.progress import CancelToken
from engine.lm.config import SamplingConfig
from engine.lm.textstream import TextStream


def _prompt(tok, text="Tell me about penguins and the sea."):
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                   return_dict=False)


@pytest.mark.parametrize("path", ["standard", "fast"])
def test_cached_prefix_plus_suffix_equals_uncached(tiny_lm, tokenizer, path, monkeypatch):
    monkeypatch.setattr(tiny_lm, "engine_path", path, raising=False)  # restored even when the test fails
    fwd = get_forward(tiny_lm)
    ids = torch.tensor([_prompt(tokenizer)])
    full = StandardForward(tiny_lm.model).logits(ids, StandardForward(tiny_lm.model).new_cache(), keep=0)
    cache = fwd.new_cache()
    fwd.logits(ids[:, :12], cache, keep=1)
    tail = fwd.logits(ids[:, 12:], cache, keep=0)
    assert torch.allclose(tail, full[:, 12:], atol=1e-4)


def test_fork_leaves_source_unchanged(tiny_lm, tokenizer):
    fwd = get_forward(tiny_lm)
    ids = torch.tensor([_prompt(tokenizer)])
    cache = fwd.new_cache()
    fwd.logits(ids, cache)
    n = fwd.cache_len(cache)
    fork = fwd.fork(cache, keep=10)
    assert fwd.cache_len(fork) == 10
    out_fork = fwd.logits(ids[:, 10:], fork, keep=1)
    assert fwd.cache_len(cache) == n
    again = fwd.logits(ids[:, -1:], fwd.fork(cache, keep=n - 1), keep=1)
    assert torch.allclose(out_fork[:, -1], again[:, -1], atol=1e-4)


@pytest.mark.parametrize("path", ["standard", "fast"])
def test_greedy_equals_hf_generate(tiny_lm, tokenizer, path, monkeypatch):
    monkeypatch.setattr(tiny_lm, "engine_path", path, raising=False)
    ids = _prompt(tokenizer)
    res, _ = generate(tiny_lm, ids, SamplingConfig(max_new_tokens=25, temperature=0.0))
    hf = tiny_lm.model.generate(torch.tensor([ids]), max_new_tokens=25, do_sample=False,
                                eos_token_id=tiny_lm.eos_ids, pad_token_id=0)
    hf_new = hf[0, len(ids):].tolist()
    hf_new = [t for t in hf_new if t not in tiny_lm.eos_ids]
    assert res.token_ids == hf_new[: len(res.token_ids)]
    assert res.new_tokens == len(res.token_ids) > 0


def test_greedy_equals_hf_generate_bundled(smol_lm):
    ids = _prompt(smol_lm.tokenizer, "What is the capital of France?")
    res, _ = generate(smol_lm, ids, SamplingConfig(max_new_tokens=20, temperature=0.0))
    hf = smol_lm.model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)
    hf_new = [t for t in hf[0, len(ids):].tolist() if t not in smol_lm.eos_ids]
    assert res.token_ids == hf_new
    assert "Paris" in res.text


def test_same_seed_same_samples(tiny_lm, tokenizer):
    ids = _prompt(tokenizer)
    cfg = SamplingConfig(max_new_tokens=15, temperature=1.0, top_p=0.9, seed=123)
    a, _ = generate(tiny_lm, ids, cfg)
    b, _ = generate(tiny_lm, ids, cfg)
    c, _ = generate(tiny_lm, ids, SamplingConfig(max_new_tokens=15, temperature=1.0, top_p=0.9, seed=124))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids
    ba = generate_batch(tiny_lm, ids, 4, cfg)
    bb = generate_batch(tiny_lm, ids, 4, cfg)
    assert [r.token_ids for r in ba] == [r.token_ids for r in bb]
    assert len({tuple(r.token_ids) for r in ba}) > 1  # rows are independent samples


def test_batch_greedy_rows_equal_single(tiny_lm, tokenizer):
    ids = _prompt(tokenizer)
    single, _ = generate(tiny_lm, ids, SamplingConfig(max_new_tokens=12, temperature=0.0))
    rows = generate_batch(tiny_lm, ids, 3, SamplingConfig(max_new_tokens=12, temperature=0.0))
    assert all(r.token_ids == single.token_ids for r in rows)


def test_stop_string_across_token_boundaries(tokenizer):
    text = "The answer is: forty-two. Done."
    ids = tokenizer.encode(text, add_special_tokens=False)
    stop = "two. Do"
    # the stop string must span more than one token for this test to mean anything
    pieces = [tokenizer.decode([i]) for i in ids]
    assert not any(stop in p for p in pieces)
    s = TextStream(tokenizer, [stop])
    shown = ""
    hit = False
    for i in ids:
        d, hit = s.push(i)
        shown += d
        if hit:
            break
    shown += s.flush()
    assert hit
    assert shown == "The answer is: forty-" == s.final_text
    assert stop not in shown


def test_stream_holds_back_partial_utf8(tokenizer):
    text = "🦜 naïve 中文"
    ids = tokenizer.encode(text, add_special_tokens=False)
    s = TextStream(tokenizer)
    shown = "".join(s.push(i)[0] for i in ids) + s.flush()
    assert shown == text and "\ufffd" not in shown


def test_stop_string_in_generate(tiny_lm, tokenizer):
    ids = _prompt(tokenizer)
    free, _ = generate(tiny_lm, ids, SamplingConfig(max_new_tokens=20, temperature=0.0))
    # pick a stop string straddling tokens 3 and 4 of the free-running answer
    a = tokenizer.decode(free.token_ids[:3])
    b = tokenizer.decode(free.token_ids[:4])
    stop = b[len(a) - 2: len(a) + 2] if len(b) - len(a) >= 2 and len(a) >= 2 else b[-3:]
    res, _ = generate(tiny_lm, ids, SamplingConfig(max_new_tokens=20, temperature=0.0,
                                                   stop_strings=(stop,)))
    assert res.stop_reason == "stop_string"
    assert stop not in res.text
    assert free.text.startswith(res.text)


def test_cancel_mid_answer_returns_within_one_token(tiny_lm, tokenizer):
    token = CancelToken()
    seen = []

    def on_token(delta, tid):
        seen.append(tid)
        if len(seen) == 5:
            token.cancel("user")

    res, _ = generate(tiny_lm, _prompt(tokenizer), SamplingConfig(max_new_tokens=200, temperature=0.0),
                      on_token=on_token, cancel=token)
    assert res.stop_reason == "cancelled"
    assert res.new_tokens == 5  # the check before the next forward caught it


def test_cancel_batch_from_other_thread(tiny_lm, tokenizer, monkeypatch):
    monkeypatch.setattr(tiny_lm, "eos_ids", [])  # no row can end on its own: the cancel must stop it
    token = CancelToken()
    threads: list[threading.Thread] = []

    def progress(p):  # once decoding runs, another thread cancels (a fixed timer could fire before
        if not threads:  # the first token on a loaded machine)
            threads.append(threading.Thread(target=token.cancel))
            threads[0].start()

    rows = generate_batch(tiny_lm, _prompt(tokenizer), 3, SamplingConfig(max_new_tokens=1500, temperature=1.0, seed=0),
                          progress=progress, cancel=token)
    assert threads, "progress was never reported"
    threads[0].join()
    assert [r.stop_reason for r in rows] == ["cancelled"] * 3
    assert all(0 < r.new_tokens < 1500 for r in rows)


def test_bad_settings_and_inputs(tiny_lm, tokenizer):
    with pytest.raises(InputError):
        generate(tiny_lm, [], SamplingConfig())
    for bad in (SamplingConfig(max_new_tokens=0), SamplingConfig(temperature=-1),
                SamplingConfig(top_p=0.0), SamplingConfig(top_k=-3)):
        with pytest.raises(InputError):
            generate(tiny_lm, _prompt(tokenizer), bad)
    with pytest.raises(InputError):
        generate_batch(tiny_lm, _prompt(tokenizer), 0, SamplingConfig())
    with pytest.raises(ContextOverflow):
        generate(tiny_lm, [1] * 2040, SamplingConfig(max_new_tokens=20))


def test_top_p_keeps_at_least_one_and_temperature_zero_is_argmax():
    from engine.lm.sampling import LogitsPipeline

    logits = torch.tensor([[5.0, 1.0, 0.5, -2.0]])
    p = LogitsPipeline(SamplingConfig(temperature=1.0, top_p=1e-6)).process(logits)
    assert torch.isfinite(p).sum() == 1 and p.argmax() == 0
    assert int(LogitsPipeline(SamplingConfig(temperature=0.0)).choose(logits)[0]) == 0
    k = LogitsPipeline(SamplingConfig(temperature=1.0, top_k=2, top_p=1.0)).process(logits)
    assert torch.isfinite(k).sum() == 2


def _top_p_by_sorting(x: torch.Tensor, p: float) -> list[set[int]]:
    """Brute force: sort each row, keep the smallest prefix whose mass reaches p (≥ 1 token)."""
    out = []
    for row in x:
        probs = row.softmax(-1).double()
        order = torch.argsort(row, descending=True).tolist()
        kept, mass = [], 0.0
        for t in order:
            if kept and mass >= p:
                break
            kept.append(t)
            mass += float(probs[t])
        out.append(set(kept))
    return out


@pytest.mark.parametrize("scale", [8.0, 1.0, 0.05])  # peaked, ordinary, nearly flat (widening)
def test_nucleus_equals_sorting_and_draws_stay_inside(scale):
    from engine.lm.sampling import LogitsPipeline, nucleus

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5000, generator=g) * scale
    for p in (0.3, 0.9, 0.99):
        sx, idx, probs, keep = nucleus(x, p)
        got = [set(idx[r][keep[r]].tolist()) for r in range(x.shape[0])]
        assert got == _top_p_by_sorting(x, p)
        assert torch.allclose(probs, x.softmax(-1).gather(-1, idx), atol=1e-6)
        full = LogitsPipeline(SamplingConfig(temperature=1.0, top_p=p)).process(x)
        assert [set(torch.nonzero(torch.isfinite(r)).flatten().tolist()) for r in full] == got
    # draws come from the nucleus, with frequencies of the renormalised probabilities
    cfg = SamplingConfig(temperature=1.0, top_p=0.9)
    y = torch.tensor([[3.0, 2.5, 2.0, -5.0, -6.0]]).repeat(4000, 1)
    draws = LogitsPipeline(cfg, generator=torch.Generator().manual_seed(1)).choose(y)
    assert set(draws.tolist()) <= {0, 1, 2}
    q = y[0, :3].softmax(-1)
    freq = torch.bincount(draws, minlength=3)[:3].double() / len(draws)
    assert torch.allclose(freq, q.double(), atol=0.03), (freq, q)
