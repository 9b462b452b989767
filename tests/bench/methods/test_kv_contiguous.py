"""The vAttention-style row: one buffer written in place on the same HF forward as the
baseline: identical tokens and log-probs, one position written per generated token (the
baseline's DynamicCache re-copies the whole cache), the whole reservation as its allocation."""
from __future__ import annotations

import pytest
import torch

from engine.bench.methods import make_method
from engine.bench.methods.base import Query
from engine.errors import InputError


def _per_token(lm) -> int:
    c = lm.model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 4


def test_same_forward_same_tokens_and_logprobs(tiny_lm, sample_text):
    q = Query(id="doc", kind="qa", prompt="Who helped?", document=sample_text[:600])
    base, cont = make_method("baseline"), make_method("kv-contiguous")
    a, b = base.run(tiny_lm, q, 8, fixed_length=True), cont.run(tiny_lm, q, 8, fixed_length=True)
    assert a.token_ids == b.token_ids
    assert torch.allclose(base.teacher_forced_logprobs(tiny_lm, q, a.token_ids),
                          cont.teacher_forced_logprobs(tiny_lm, q, a.token_ids), atol=1e-5)
    per = _per_token(tiny_lm)
    assert b.cost["kv_copy_bytes_per_token"] == per  # one position per step, in place
    assert a.cost["kv_copy_bytes_per_token"] > 10 * per  # torch.cat: the whole cache per step
    assert b.cost["kv_bytes_stored"] == a.cost["kv_bytes_stored"]
    assert b.cost["kv_bytes_allocated"] == tiny_lm.context_length * per  # the reservation
    assert b.extra["reserved_positions"] == tiny_lm.context_length


def test_a_fixed_reservation_is_enforced(tiny_lm):
    q = Query(id="c", kind="chat", prompt="Say something about rain.")
    m = make_method("kv-contiguous", reserve=8)
    with pytest.raises(InputError, match="reserved"):
        m.run(tiny_lm, q, 16)
    with pytest.raises(InputError):
        make_method("kv-contiguous", reserve=0)


def test_all_combined_runs_every_composable_method_at_once(tiny_lm, sample_text):
    q = Query(id="doc", kind="qa", prompt="What did the neighbour do?", document=sample_text[:1500])
    m = make_method("all-combined", **{"cache.budget": 40, "cache.window": 8, "model.sparsity": 0.3})
    assert m.model_changing and m.speed_note.startswith("n/a")
    assert {"prompt.ratio", "cache.budget", "model.sparsity"} <= set(m.params)
    m.prepare(tiny_lm)
    try:
        out = m.run(tiny_lm, q, 6, fixed_length=True)
    finally:
        m.restore(tiny_lm)
    assert out.cost["prompt_tokens_effective"] < out.cost["prompt_tokens_in"]  # pruned
    assert sum(out.extra["kv_tokens_kept"]) == 40 * tiny_lm.model.config.num_hidden_layers  # CAKE
    assert "layer_budgets" in out.extra
    with pytest.raises(InputError, match="unknown parameter .budget. for all-combined"):
        make_method("all-combined", budget=3)


def test_the_reservation_is_one_mapping_made_before_the_prefill(tiny_lm):
    """Every layer's K and V are views of one anonymous mmap made in new_state, not heap blocks
    allocated between the prefill's activations (which committed nearly the whole reservation:
    docs/bench-methods.md, "Contiguous KV")."""
    m = make_method("kv-contiguous")
    q = Query(id="c", kind="chat", prompt="Say something about rain.")
    st = m.new_state(tiny_lm, q, m.render_prompt(tiny_lm, q))
    bufs = [b for lay in st.cache.layers for b in (lay.kbuf, lay.vbuf)]
    assert all(lay.is_initialized and lay.length == 0 for lay in st.cache.layers)
    assert len({b.untyped_storage().data_ptr() for b in bufs}) == 1  # one region
    region = bufs[0].untyped_storage()
    assert region.nbytes() == tiny_lm.context_length * _per_token(tiny_lm)
    heap = [line.split()[0] for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
    for span in heap:
        lo, hi = (int(x, 16) for x in span.split("-"))
        assert not lo <= region.data_ptr() < hi
