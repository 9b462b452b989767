"""Form validators: typed values for good input, one clear InputError otherwise."""
from __future__ import annotations

import pytest

from app import validate as v
from engine.errors import InputError
from engine.lm.config import ModelConfig, SamplingConfig


def field(name, **kw):
    """The form parser of one SamplingConfig field (its declared bound)."""
    return lambda t: v.parse_field(t, SamplingConfig, name, **kw)


def device(text):
    return v.parse_field(text, ModelConfig, "device")


@pytest.mark.parametrize("fn,text,want", [
    (field("temperature"), "0", 0.0), (field("temperature"), " 1.5 ", 1.5),
    (field("top_p"), "1", 1.0), (field("top_k"), "40", 40), (field("seed"), "", None),
    (field("seed"), "123", 123), (field("repetition_penalty"), "1.1", 1.1),
    (field("max_new_tokens", hi=2047), "2047", 2047),
    (lambda t: v.parse_timeout(t, "chat timeout"), "", None),
    (lambda t: v.parse_timeout(t, "chat timeout"), "0", None),
    (lambda t: v.parse_timeout(t, "chat timeout"), "90", 90.0),
    (device, "cuda:1", "cuda:1"), (device, " CPU ", "cpu"), (device, "mps", "mps"),
    (field("stop_strings"), "###,\\n\\n", ("###", "\n\n")), (field("stop_strings"), " ", ()),
    (field("banned_ids"), "5, 17,0", (5, 17, 0)), (field("min_p"), "0.05", 0.05),
    (lambda t: v.require_text(t, "message"), "héllo 👋", "héllo 👋"),
])
def test_good(fn, text, want):
    assert fn(text) == want


@pytest.mark.parametrize("fn,text,words", [
    (field("temperature"), "", "enter a number"), (field("temperature"), "warm", "not a number"),
    (field("temperature"), "-1", "≥ 0"), (field("temperature"), "nan", "finite"),
    (field("top_p"), "0", "greater than 0"), (field("top_p"), "1.01", "≤ 1"),
    (field("top_k"), "2.5", "whole number"), (field("seed"), "-3", "≥ 0"),
    (field("max_new_tokens", hi=2047), "2048", "≤ 2047"),
    (field("max_new_tokens"), "0", "≥ 1"),
    (field("repetition_penalty"), "0", "greater than 0"),
    (lambda t: v.parse_timeout(t, "chat timeout"), "0.5", "≥ 1"),
    (lambda t: v.parse_timeout(t, "chat timeout"), "soon", "not a number"),
    (device, "gpu", "device: must be one of auto, cpu, cuda, mps, cuda:N"),
    (device, "cuda:x", "device"), (v.parse_model_spec, "  ", "empty"),
    (lambda t: v.require_text(t, "message"), " \n ", "empty"),
    (lambda t: v.require_text(t, "message", 10), "x" * 11, "too long"),
    (lambda t: v.require_text(t, "message"), "bad \ud800", "surrogates"),
    (field("stop_strings"), ",".join("abcdefghijklmnopq"), "17 given, at most 16"),
    (field("stop_strings"), "ok," + "x" * 1001, "item 2 is 1,001 characters: too long"),
    (field("banned_ids"), "5,-1", "item 2: must be ≥ 0"), (field("banned_ids"), "5,x", "whole number"),
    (field("min_p"), "1.5", "≤ 1"),
])
def test_bad(fn, text, words):
    with pytest.raises(InputError) as e:
        fn(text)
    assert words in str(e.value)


def test_parse_dir_rejects_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        v.parse_dir(str(f), "export folder")
    assert v.parse_dir(str(tmp_path / "new"), "export folder") == tmp_path / "new"


def test_field_check_adapter():
    check = v.FieldCheck(field("top_p"))
    assert check.validate("0.5").is_valid
    bad = check.validate("2")
    assert not bad.is_valid and "≤ 1" in bad.failure_descriptions[0]


def test_derived_timeouts_scale_with_speed():
    from app.settings import derive_timeouts

    slow, fast = derive_timeouts(2.0, 256), derive_timeouts(50.0, 256)
    assert slow["chat"] == 390.0 and fast["chat"] == 30.0  # 3 × 256/2 = 384 → 390; floor 30
    assert fast["tree"] > fast["advtok"] > fast["chat"] and slow["load"] is None
    assert slow["tree"] == slow["advtok"] == 1800.0  # 6.4 h and 4.3 h, capped at 30 min
    assert derive_timeouts(None, 256) == derive_timeouts(2.0, 256)
