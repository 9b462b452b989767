"""The hybrid row (contiguous buffer + CAKE eviction): its decisions and outputs are evict-cake's
(the same set of (head, position) entries kept after every step, same tokens, log-probs within
fp32 rounding) although it keeps them in another order: the prefill's eviction compacts once,
then each decode step writes the new token into the slot CAKE's rule just freed, so a step
writes the new token's K and V only; the buffer's address never changes; a prompt that fits is
kv-contiguous exactly."""
from __future__ import annotations

import pytest
import torch

from engine.bench.methods import make_method
from engine.bench.methods.base import Query
from engine.bench.methods.combined import ALL_PARTS
from engine.bench.methods.kv_contiguous import ContiguousLayer
from engine.bench.methods.kv_evict_cake import CakeEviction
from engine.errors import InputError

CAKE = {"budget": 40, "window": 8}


def _per_token(lm) -> int:
    c = lm.model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 4


@pytest.fixture(scope="module")
def long_q(sample_text):
    return Query(id="doc", kind="qa", prompt="What did the neighbour do?", document=sample_text[:1500])


class _TrackedCake(CakeEviction):
    """evict-cake with the position of every entry it holds recorded beside it (the test's
    reference for the hybrid's kept set): new entries get the positions just fed, and each
    eviction keeps the same indices of the record as of the cache."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.pos: dict[int, torch.Tensor] = {}

    def evict(self, lm, st):
        for lay in st.cache.layers:
            old = self.pos.get(id(lay), torch.zeros(lay.keys.shape[1], 0, dtype=torch.long))
            new = lay.keys.shape[-2] - old.shape[1]
            fed = torch.arange(st.pos - new, st.pos).expand(old.shape[0], new)
            self.pos[id(lay)] = torch.cat([old, fed], dim=1)
        return super().evict(lm, st)

    def _apply_keep(self, lay, idx):
        self.pos[id(lay)] = self.pos[id(lay)].gather(1, idx)
        super()._apply_keep(lay, idx)


def _live(lh: ContiguousLayer) -> list[list[int]]:
    """Per head, the slots holding live entries (a released slot left out)."""
    return [[s for s in range(lh.length) if lh.free is None or s != int(lh.free[h])]
            for h in range(lh.kbuf.shape[1])]


def _assert_same_entries(cake, sc, sh, where) -> None:
    """Every layer and head of the hybrid holds the same (position → K, V) entries as evict-cake."""
    for i, (lc, lh) in enumerate(zip(sc.cache.layers, sh.cache.layers)):
        pc = cake.pos[id(lc)]
        assert lh.get_seq_length() == pc.shape[1] == lc.keys.shape[-2], (where, i)
        for h, slots in enumerate(_live(lh)):
            got = {int(lh.positions()[h, s]): s for s in slots}
            want = {int(p): j for j, p in enumerate(pc[h])}
            assert set(got) == set(want), (where, i, h)
            for p, s in got.items():
                assert torch.allclose(lh.keys[0, h, s], lc.keys[0, h, want[p]], atol=1e-6), (where, i, h, p)
                assert torch.allclose(lh.values[0, h, s], lc.values[0, h, want[p]], atol=1e-6)


def _lockstep(lm, q, cake_kw, steps, compacting=()):
    """Prefill then ``steps`` decode steps of evict-cake and hybrid-kv fed the same (cake's
    greedy) tokens, checking after each forward: the same entries kept, the same budgets and
    counts, the same mask sizes, log-probs within 1e-5, the buffers never moved, and what each
    step wrote (the new token only, except at the ``compacting`` steps)."""
    cake, hyb = _TrackedCake(**cake_kw), make_method("hybrid-kv", **cake_kw)
    prompt = cake.render_prompt(lm, q)
    sc, sh = cake.new_state(lm, q, prompt), hyb.new_state(lm, q, prompt)
    bufs = [(lay.kbuf.data_ptr(), lay.vbuf.data_ptr()) for lay in sh.cache.layers]
    a, b = cake.feed(lm, sc, prompt)[-1], hyb.feed(lm, sh, prompt)[-1]
    heads, dim = sh.cache.layers[0].kbuf.shape[1], sh.cache.layers[0].kbuf.shape[-1]
    one = 2 * heads * dim * 4  # one token's K and V in one layer
    reused = 0
    for step in range(steps + 1):
        assert torch.allclose(torch.log_softmax(a, -1), torch.log_softmax(b, -1), atol=1e-5), step
        for k in ("evicted", "layer_budgets", "kv_tokens_kept", "kv_bytes_per_layer"):
            assert sh.info[k] == sc.info[k], (step, k)
        _assert_same_entries(cake, sc, sh, step)
        for i in range(len(sh.cache.layers)):  # what Hugging Face sizes the next mask from
            assert sh.cache.get_mask_sizes(1, i) == sc.cache.get_mask_sizes(1, i), (step, i)
            assert sh.cache.get_query_offset(i) == sc.cache.get_query_offset(i), (step, i)
        for lay, ptrs in zip(sh.cache.layers, bufs):
            assert (lay.kbuf.data_ptr(), lay.vbuf.data_ptr()) == ptrs  # never reallocated
            assert lay.keys.data_ptr() == ptrs[0] and lay.values.data_ptr() == ptrs[1]
        if step == steps:
            break
        written = [lay.bytes_written for lay in sh.cache.layers]
        compacted = sh.info.get("kv_compaction_bytes")
        free = [lay.free is not None for lay in sh.cache.layers]
        tok = [int(a.argmax())]
        a, b = cake.feed(lm, sc, tok)[-1], hyb.feed(lm, sh, tok)[-1]
        if step in compacting:
            assert sh.info["kv_compaction_bytes"] > (compacted or 0)
            continue
        # a decode step writes the new token only (into the freed slot, or appended), and
        # never compacts: the rule evicts one entry per head
        assert [lay.bytes_written - w for lay, w in zip(sh.cache.layers, written)] == \
            [one] * len(written), step
        assert sh.info["kv_compaction_bytes"] == compacted
        reused += sum(free)
    assert reused > 0  # slots were reused, not just appended
    return sc, sh


def test_same_entries_kept_as_cake_after_every_step(tiny_lm, long_q):
    """The prompt does not fit: the prefill evicts (and compacts once); from the first decode
    step on every layer is over B_l + w, so each step frees a slot per head and the next token
    goes into it."""
    prompt = make_method("evict-cake", **CAKE).render_prompt(tiny_lm, long_q)
    assert len(prompt) > CAKE["budget"] + CAKE["window"]
    sc, sh = _lockstep(tiny_lm, long_q, CAKE, 12)
    assert sh.info["prefill_evicted"] is True and sh.info["kv_compaction_bytes"] > 0
    # the slots no longer follow the order the tokens came in, yet the entries are cake's
    assert any(bool((lay.positions().diff(dim=-1) < 0).any()) for lay in sh.cache.layers)


def test_eviction_that_starts_while_decoding_reuses_slots(tiny_lm, sample_text):
    """A prompt of at most the budget: nothing evicted at the prefill, tokens appended until a
    layer holds more than B_l + w (= budget), then slot reuse — never a compaction."""
    q = Query(id="mid", kind="qa", prompt="Who helped?", document=sample_text[:250])
    n = len(make_method("evict-cake").render_prompt(tiny_lm, q))
    sc, sh = _lockstep(tiny_lm, q, {"budget": n + 3, "window": 8}, 10)  # over it at the 4th token
    assert sh.info["prefill_evicted"] is False and sh.info["evicted"] > 0
    assert sh.info["kv_compaction_bytes"] == 0


def test_a_prompt_between_budget_and_budget_plus_window(tiny_lm, sample_text):
    """budget < prompt <= budget + w: left whole at the prefill (CAKE's fit test), then the
    first decode step cuts every layer to budget − w + w entries, several per head at once —
    the one step that compacts; every later step reuses a slot."""
    q = Query(id="mid", kind="qa", prompt="Who helped?", document=sample_text[:250])
    n = len(make_method("evict-cake").render_prompt(tiny_lm, q))
    sc, sh = _lockstep(tiny_lm, q, {"budget": n - 3, "window": 8}, 8, compacting={0})
    assert sh.info["prefill_evicted"] is False


def test_same_tokens_and_logprobs_as_cake_with_one_token_written_per_step(tiny_lm, long_q):
    cake, hyb = make_method("evict-cake", **CAKE), make_method("hybrid-kv", **CAKE)
    a, b = cake.run(tiny_lm, long_q, 10, fixed_length=True), hyb.run(tiny_lm, long_q, 10, fixed_length=True)
    assert a.token_ids == b.token_ids
    for k in ("evicted", "layer_budgets", "kv_tokens_kept", "prefill_evicted", "kv_bytes_per_layer"):
        assert a.extra[k] == b.extra[k], k
    assert torch.allclose(cake.teacher_forced_logprobs(tiny_lm, long_q, a.token_ids),
                          hyb.teacher_forced_logprobs(tiny_lm, long_q, a.token_ids), atol=1e-5)
    per = _per_token(tiny_lm)
    assert b.cost["kv_bytes_stored"] == a.cost["kv_bytes_stored"]  # the same entries counted
    assert b.cost["kv_bytes_allocated"] == tiny_lm.context_length * per  # the reservation, held
    assert b.extra["reserved_positions"] == tiny_lm.context_length
    # every decode step evicts, yet writes only the new token (evict-cake gathers what it keeps)
    assert b.cost["kv_copy_bytes_per_token"] == per < a.cost["kv_copy_bytes_per_token"]
    assert b.extra["kv_compaction_bytes"] > 0  # the prefill's one compaction


def test_a_prompt_that_fits_is_kv_contiguous(tiny_lm, sample_text):
    q = Query(id="short", kind="qa", prompt="Who helped?", document=sample_text[:250])
    cont, hyb = make_method("kv-contiguous"), make_method("hybrid-kv", budget=128, window=32)
    assert len(hyb.render_prompt(tiny_lm, q)) <= 128 + 32
    a, b = cont.run(tiny_lm, q, 8, fixed_length=True), hyb.run(tiny_lm, q, 8, fixed_length=True)
    assert a.token_ids == b.token_ids
    assert b.extra["prefill_evicted"] is False and b.extra["evicted"] == 0
    assert b.extra["kv_compaction_bytes"] == 0
    per = _per_token(tiny_lm)
    assert b.cost["kv_copy_bytes_per_token"] == a.cost["kv_copy_bytes_per_token"] == per
    for k in ("kv_bytes_stored", "kv_bytes_allocated"):
        assert a.cost[k] == b.cost[k], k
    assert torch.allclose(cont.teacher_forced_logprobs(tiny_lm, q, a.token_ids),
                          hyb.teacher_forced_logprobs(tiny_lm, q, a.token_ids), atol=1e-5)


def test_compact_moves_only_what_moves_and_counts_it():
    """A layer of 3 heads × 10 positions keeps a different set per head: the result is the
    gather; rows already in place are not copied; each moved row is counted twice (staging
    copy and write back)."""
    torch.manual_seed(0)
    lay = ContiguousLayer(16)
    k, v = torch.randn(1, 3, 10, 4), torch.randn(1, 3, 10, 4)
    lay.update(k, v)
    assert lay.bytes_written == 2 * k.numel() * 4
    idx = torch.tensor([[0, 1, 2, 3, 4, 5, 7], [0, 1, 2, 3, 4, 5, 6], [1, 3, 4, 6, 7, 8, 9]])
    before = lay.bytes_written
    lay.compact(idx)
    want = torch.stack([k[0, h, idx[h]] for h in range(3)]).unsqueeze(0)
    assert torch.equal(lay.keys, want) and lay.get_seq_length() == 7
    assert lay.positions().tolist() == idx.tolist()  # each slot's position moved with its row
    assert torch.equal(lay.values, torch.stack([v[0, h, idx[h]] for h in range(3)]).unsqueeze(0))
    moved_rows = 1 + 0 + 7  # head 0 moves position 6 only, head 1 nothing, head 2 all seven
    assert lay.bytes_written - before == lay.bytes_compacted == 2 * 2 * moved_rows * 4 * 4
    lay.update(torch.ones(1, 3, 1, 4), torch.ones(1, 3, 1, 4))  # appends after the kept rows
    assert lay.get_seq_length() == 8 and torch.equal(lay.keys[0, :, 7], torch.ones(3, 4))
    with pytest.raises(InputError, match="cannot keep"):
        lay.compact(torch.zeros(2, 3, dtype=torch.long))


def test_release_reuses_the_slot_for_the_next_token():
    """A released slot per head is written over by the next token (a per-head scatter); the
    rest of a several-token write is appended after it; only the new tokens are counted; the
    live length excludes the released slot until then."""
    torch.manual_seed(0)
    lay = ContiguousLayer(16)
    k, v = torch.randn(1, 3, 6, 4), torch.randn(1, 3, 6, 4)
    lay.update(k, v)
    lay.release(torch.tensor([1, 4, 0]))
    assert lay.get_seq_length() == 5 and lay.length == 6
    with pytest.raises(InputError, match="already free"):
        lay.release(torch.tensor([2, 2, 2]))
    with pytest.raises(InputError, match="cannot keep"):
        lay.compact(torch.zeros(3, 2, dtype=torch.long))
    before = lay.bytes_written
    nk, nv = torch.randn(1, 3, 2, 4), torch.randn(1, 3, 2, 4)
    lay.update(nk, nv)
    assert lay.bytes_written - before == 2 * nk.numel() * 4 and lay.bytes_compacted == 0
    assert lay.free is None and lay.get_seq_length() == lay.length == 7
    for h, s in enumerate([1, 4, 0]):
        assert torch.equal(lay.keys[0, h, s], nk[0, h, 0]) and torch.equal(lay.values[0, h, s], nv[0, h, 0])
        assert torch.equal(lay.keys[0, h, 6], nk[0, h, 1])
        others = [j for j in range(6) if j != s]
        assert torch.equal(lay.keys[0, h, others], k[0, h, others])
        want = list(range(6)) + [7]
        want[s] = 6
        assert lay.positions()[h].tolist() == want
    with pytest.raises(InputError, match="cannot release"):
        lay.release(torch.tensor([0, 7, 1]))


def test_params_and_registry():
    m = make_method("hybrid-kv", budget=64, window=16, gamma=10.0, reserve=4096)
    assert m.params == {"budget": 64, "window": 16, "pool": 5, "gamma": 10.0, "tau1": 1.0,
                        "tau2": 1.0, "reserve": 4096}
    assert m.label == "Hybrid KV: contiguous buffer + CAKE eviction" and "reused" in m.simplification
    with pytest.raises(InputError, match="unknown parameter.*sinks") as e:
        make_method("hybrid-kv", sinks=4)
    assert "reserve" in e.value.hint
    for bad in (dict(reserve=0), dict(budget=8, window=8), dict(tau1=0.0)):
        with pytest.raises(InputError):
            make_method("hybrid-kv", **bad)
    assert ALL_PARTS["cache"] == "hybrid-kv"
    assert make_method("prune-selfinfo+hybrid-kv").c.name == "hybrid-kv"


def test_all_combined_caches_in_the_hybrid(tiny_lm, long_q):
    from engine.bench.suite import load_suite

    m = make_method("all-combined", **{"cache.budget": 40, "cache.window": 8, "model.sparsity": 0.3,
                                       "model.calib_tokens": 192})
    m.use_suite(load_suite("core-v1"))
    assert "hybrid-kv" in m.label and "cache.reserve" in m.params
    assert "contiguous buffer + CAKE" in m.simplification
    m.prepare(tiny_lm)
    try:
        out = m.run(tiny_lm, long_q, 6, fixed_length=True)
    finally:
        m.restore(tiny_lm)
    assert out.extra["prefill_evicted"] is True and out.extra["kv_compaction_bytes"] > 0
    assert out.cost["kv_copy_bytes_per_token"] == _per_token(tiny_lm)  # the new token only
    assert out.cost["kv_bytes_allocated"] == tiny_lm.context_length * _per_token(tiny_lm)
    assert sum(out.extra["kv_tokens_kept"]) == 40 * tiny_lm.model.config.num_hidden_layers


def test_the_cuda_reservation_is_the_request_only_when_its_length_is_known():
    """No lazy commit on CUDA: a run reserves prompt + new tokens; a state made outside the
    method's own run (teacher forcing, a combination) feeds an unknown number of targets and
    reserves the context (it used to reserve prompt + 2 and overflow)."""
    from types import SimpleNamespace

    lm = SimpleNamespace(torch_device=torch.device("cuda"), context_length=2048)
    for name in ("kv-contiguous", "hybrid-kv"):
        m = make_method(name)
        assert m.positions(lm, 100) == 2048
        m._need = 24
        assert m.positions(lm, 100) == 125
        assert m.positions(SimpleNamespace(torch_device=torch.device("cpu"), context_length=2048), 100) == 2048


@pytest.mark.slow
def test_bundled_model_long_prompt_same_tokens_as_cake(smol_lm):
    """The bundled model on the suite's long-1 (a 498-token prompt, evicted at the prefill, then
    one entry per head and layer each step): evict-cake's tokens, and one token's K/V written
    per step against evict-cake's gather of everything it keeps."""
    from engine.bench.suite import load_suite

    q = load_suite("core-v1", ids=["long-1"]).queries[0]
    cake, hyb = make_method("evict-cake"), make_method("hybrid-kv")
    a, b = cake.run(smol_lm, q, 16, fixed_length=True), hyb.run(smol_lm, q, 16, fixed_length=True)
    assert b.extra["prefill_evicted"] is True
    assert a.token_ids == b.token_ids
    assert a.extra["kv_tokens_kept"] == b.extra["kv_tokens_kept"]
    assert b.cost["kv_copy_bytes_per_token"] == _per_token(smol_lm) < a.cost["kv_copy_bytes_per_token"]
