"""The lean forward's K/V caches (engine/lm/fastcache.py): forks are O(1) and copy-on-write in both
directions, one decoding cache never copies, buffers grow by doubling, repeat/select match the
standard path, bad requests leave nothing half-written, and any interleaving of forks and writes
gives each cache the logits of a fresh forward of exactly the tokens it holds."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import InputError
from lean_helpers import PROMPTS, assert_close, chat_ids, lean_pair


def test_fork_copy_on_write_both_directions(tiny_lm, tokenizer):
    _, lean = lean_pair(tiny_lm)
    ids = torch.tensor([chat_ids(tokenizer, PROMPTS[0])])
    n = ids.shape[1]
    src = lean.new_cache()
    lean.logits(ids, src)
    fork = lean.fork(src, keep=n - 4)
    assert fork.store is src.store  # O(1): shares the buffer
    # source continues first (in place), then the fork diverges (must copy, not clobber)
    a = lean.logits(torch.tensor([[11, 12]]), src, keep=0)
    b = lean.logits(torch.tensor([[13, 14, 15]]), fork, keep=0)
    assert fork.store is not src.store
    fresh_a = lean.logits(torch.cat([ids, torch.tensor([[11, 12]])], 1), lean.new_cache(), keep=2)
    fresh_b = lean.logits(torch.cat([ids[:, :-4], torch.tensor([[13, 14, 15]])], 1), lean.new_cache(), keep=3)
    assert_close(a, fresh_a)
    assert_close(b, fresh_b)
    # and the source is still intact after the fork's writes
    c = lean.logits(torch.tensor([[16]]), src)
    fresh_c = lean.logits(torch.cat([ids, torch.tensor([[11, 12, 16]])], 1), lean.new_cache())
    assert_close(c, fresh_c)


def test_single_cache_decode_never_copies(tiny_lm, tokenizer):
    _, lean = lean_pair(tiny_lm)
    c = lean.new_cache()
    lean.logits(torch.tensor([chat_ids(tokenizer, PROMPTS[1])]), c)
    store = c.store
    for _ in range(10):
        lean.logits(torch.tensor([[5]]), c)
    assert c.store is store


def test_buffer_grows_by_doubling(tiny_lm):
    _, lean = lean_pair(tiny_lm)
    c = lean.new_cache()
    lean.logits(torch.arange(10, 60).view(1, -1), c)
    cap = c.store.cap
    lean.logits(torch.arange(10, 10 + cap).view(1, -1), c)
    assert c.store.cap >= 2 * cap and lean.cache_len(c) == 50 + cap
    assert lean.cache_allocated_bytes(c) >= lean.cache_bytes(c)


def test_repeat_and_select_match_standard(tiny_lm, tokenizer):
    std, lean = lean_pair(tiny_lm)
    ids = torch.tensor([chat_ids(tokenizer, PROMPTS[2])])
    cs, cl = std.new_cache(), lean.new_cache()
    std.logits(ids, cs)
    lean.logits(ids, cl)
    cs, cl = std.repeat(cs, 3), lean.repeat(cl, 3)
    x = torch.tensor([[7], [8], [9]])
    assert_close(std.logits(x, cs), lean.logits(x, cl))
    rows = torch.tensor([2, 0])
    cs, cl = std.select(cs, rows), lean.select(cl, rows)
    y = torch.tensor([[21], [22]])
    assert_close(std.logits(y, cs), lean.logits(y, cl))
    assert lean.cache_len(cl) == std.cache_len(cs) and lean.cache_bytes(cl) == std.cache_bytes(cs)


def test_bad_inputs_raise_input_error(tiny_lm):
    _, lean = lean_pair(tiny_lm)
    c = lean.new_cache()
    lean.logits(torch.tensor([[1, 2, 3]]), c)
    with pytest.raises(InputError):
        lean.fork(c, keep=4)
    with pytest.raises(InputError):
        lean.logits(torch.zeros(1, 0, dtype=torch.long), c)
    with pytest.raises(InputError):
        lean.logits(torch.tensor([[1], [2]]), c)  # batch 2 into a batch-1 cache
    with pytest.raises(InputError):
        lean.logits(torch.tensor([[1]]), c, attention_mask=torch.ones(1, 2))
    with pytest.raises(InputError):
        lean.set_head_mode("fp4")
    assert lean.cache_len(c) == 3  # nothing half-written


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6), st.integers(1, 3)), min_size=1, max_size=6))
def test_random_fork_write_sequences_match_fresh(tiny_lm, ops):
    """Any interleaving of forks and writes: each cache's next logits equal a fresh forward of
    exactly the tokens that cache holds (brute force)."""
    _, lean = lean_pair(tiny_lm)
    root = lean.new_cache()
    lean.logits(torch.arange(100, 108).view(1, -1), root)
    caches = [(root, list(range(100, 108)))]
    tok = 200
    for pick, cut, nnew in ops:
        c, held = caches[pick % len(caches)]
        keep = min(cut, len(held))
        f, fh = lean.fork(c, keep=keep), held[:keep]
        new = list(range(tok, tok + nnew))
        tok += nnew
        out = lean.logits(torch.tensor([new]), f, keep=0)
        ref = lean.logits(torch.tensor([fh + new]), lean.new_cache(), keep=nnew)
        assert_close(out, ref)
        caches.append((f, fh + new))
    for c, held in caches:  # nobody was corrupted by later writes
        assert lean.cache_len(c) == len(held)
        out = lean.logits(torch.tensor([[5]]), lean.fork(c))
        ref = lean.logits(torch.tensor([held + [5]]), lean.new_cache())
        assert_close(out, ref)
