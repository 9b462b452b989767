"""Memory as measured: the cache's real allocation (capacity included), bytes written into it per
generated token (DynamicCache re-copies, an in-place buffer appends), the process high-water
delta, and runs at a fixed number of new tokens whatever the answer's length."""
from __future__ import annotations

import pytest
import torch

from engine.bench.memory import CopyMeter, HighWater, allocated_bytes
from engine.bench.methods import make_method
from engine.bench.records import validate_record
from engine.bench.suite import load_suite
from engine.lm.forward import StandardForward, get_forward


def _per_token_bytes(lm) -> int:
    c = lm.model.config
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    return 2 * c.num_hidden_layers * c.num_key_value_heads * head_dim * 4


def _decode(fwd, cache, n_prompt: int, steps: int, meter: CopyMeter) -> None:
    fwd.logits(torch.arange(1, n_prompt + 1).view(1, -1), cache, keep=1)
    meter.start(cache)
    for i in range(steps):
        fwd.logits(torch.tensor([[5 + i]]), cache, keep=1)
        meter.step(cache)


def test_dynamic_cache_recopies_every_step_and_holds_what_it_counts(tiny_lm):
    fwd = StandardForward(tiny_lm.model)
    cache = fwd.new_cache()
    meter = CopyMeter()
    _decode(fwd, cache, 20, 6, meter)
    per_tok = _per_token_bytes(tiny_lm)
    assert allocated_bytes(cache) == fwd.cache_bytes(cache) == 26 * per_tok
    # step i writes the whole cache of 21 + i positions (torch.cat), not one position
    assert meter.written == sum((21 + i) * per_tok for i in range(6))
    assert meter.per_token() == pytest.approx(23.5 * per_tok)


def test_contiguous_buffer_appends_in_place_and_reserves_capacity(tiny_lm):
    fwd = get_forward(tiny_lm)  # the lean forward: one preallocated buffer, written in place
    cache = fwd.new_cache()
    per_tok = _per_token_bytes(tiny_lm)
    fwd.logits(torch.arange(1, 21).view(1, -1), cache, keep=1)
    fwd.logits(torch.tensor([[3]]), cache, keep=1)  # past any growth of the first step
    meter = CopyMeter()
    meter.start(cache)
    for i in range(5):
        fwd.logits(torch.tensor([[5 + i]]), cache, keep=1)
        meter.step(cache)
    assert meter.written == 5 * per_tok  # one position per step
    assert fwd.cache_bytes(cache) == 26 * per_tok
    assert allocated_bytes(cache) == fwd.cache_allocated_bytes(cache) > fwd.cache_bytes(cache)


def test_high_water_sees_a_transient_allocation():
    with HighWater("cpu") as hw:
        x = torch.ones(16 * 2 ** 20)  # 64 MiB, touched, then freed inside the block
        del x
    if hw.delta is None:
        pytest.skip("no /proc/self/clear_refs here")
    assert hw.delta >= 48 * 2 ** 20
    with HighWater("cpu") as quiet:
        pass
    assert quiet.delta is not None and quiet.delta < 48 * 2 ** 20


def test_fixed_length_runs_decode_the_same_count_and_keep_the_answer(tiny_lm):
    q = load_suite("core-v1", ids=["chat-7"]).queries[0]
    m = make_method("baseline")
    natural = m.run(tiny_lm, q, 10)
    fixed = m.run(tiny_lm, q, 10, fixed_length=True)
    assert fixed.cost["new_tokens"] == 10 and fixed.cost["fixed_length"] is True
    assert fixed.token_ids == natural.token_ids and fixed.text == natural.text
    assert fixed.cost["answer_tokens"] == len(natural.token_ids)
    per_tok = _per_token_bytes(tiny_lm)
    prompt = fixed.cost["prompt_tokens_in"]
    assert fixed.cost["kv_bytes_stored"] == (prompt + 9) * per_tok  # the last token is not fed
    assert fixed.cost["kv_bytes_allocated"] == fixed.cost["kv_bytes_stored"]
    assert fixed.cost["kv_copy_bytes_per_token"] > per_tok


def test_eos_forced_early_still_decodes_the_fixed_count(tiny_lm, monkeypatch):
    """An answer that ends at once (EOS first) still costs max_new_tokens steps when fixed."""
    q = load_suite("core-v1", ids=["chat-7"]).queries[0]
    m = make_method("baseline")
    first = m.run(tiny_lm, q, 1).token_ids[0]
    monkeypatch.setattr(tiny_lm, "eos_ids", [first])
    out = m.run(tiny_lm, q, 6, fixed_length=True)
    assert out.token_ids == [] and out.cost["answer_tokens"] == 0 and out.cost["new_tokens"] == 6


def test_new_cost_keys_are_checked_when_present():
    import json
    from pathlib import Path

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "bench_runs.jsonl"
    rec = json.loads(fixture.read_text().splitlines()[0])
    assert validate_record(rec) == []  # older records, without them, stay valid
    rec["cost"]["kv_bytes_allocated"] = "lots"
    assert any("kv_bytes_allocated" in e for e in validate_record(rec))
