"""Model folders that cannot be loaded are refused before anything is allocated, with one
ModelLoadError: a config far beyond this machine's memory, a config whose sizes do not fit
together, a safetensors header declaring 2⁶² bytes, weights of another shape than the config."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from engine.errors import ModelLoadError
from engine.lm.model import load_model
from engine.lm.preflight import check_memory, config_params


def _copy(src: Path, dst: Path, **config) -> Path:
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for k, v in config.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_parameter_count_matches_the_model_built_from_the_config(tiny_lm):
    cfg = tiny_lm.model.config.to_dict()
    n, how = config_params(cfg)
    assert n == sum(p.numel() for p in tiny_lm.model.parameters())
    assert "2 layers × hidden 64" in how


def test_huge_consistent_config_is_refused_with_one_message(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENFORGE_MEMORY_BYTES", str(16 << 30))
    big = _copy(tiny_dir, tmp_path / "big", num_hidden_layers=1000, hidden_size=589_824,
                intermediate_size=2 * 589_824, num_attention_heads=4608, num_key_value_heads=4608,
                head_dim=128)
    with pytest.raises(ModelLoadError) as ei:
        load_model(str(big), device="cpu")
    msg = str(ei.value)
    assert "1,000 layers × hidden 589,824" in msg and "TiB in float32" in msg
    assert "16.0 GiB of memory is available" in msg
    with pytest.raises(ModelLoadError, match=r"12\.1 MiB in float16"):  # the dtype counts
        monkeypatch.setenv("TOKENFORGE_MEMORY_BYTES", str(1 << 20))
        check_memory(tiny_dir, "tiny", "float16", "cpu")


@pytest.mark.parametrize("change, words", [
    ({"hidden_size": 100, "num_attention_heads": 3, "head_dim": None}, "not a multiple"),
    ({"num_key_value_heads": 3}, "num_key_value_heads 3"),
    ({"num_hidden_layers": "many"}, "not a positive integer"),
    ({"vocab_size": -1}, "not a positive integer"),
])
def test_inconsistent_config_is_one_error(tiny_dir, tmp_path, change, words):
    bad = _copy(tiny_dir, tmp_path / "bad", **change)
    with pytest.raises(ModelLoadError, match=words):
        load_model(str(bad), device="cpu")


def test_header_declaring_2_to_the_62_bytes(tiny_dir, tmp_path):
    bad = _copy(tiny_dir, tmp_path / "hdr")
    w = bad / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(struct.pack("<Q", 1 << 62) + data[8:])
    with pytest.raises(ModelLoadError, match="model.safetensors has a bad header length"):
        load_model(str(bad), device="cpu")
    # a tensor whose offsets claim 2^62 bytes: the header parses, the file is far too short
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] = 1 << 62
    text = json.dumps(header).encode()
    w.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_model(str(bad), device="cpu")


def test_weights_of_another_shape_are_one_error(tiny_dir, tmp_path, tokenizer):
    from engine.lm.tiny import tiny_llama

    bad = _copy(tiny_dir, tmp_path / "other")
    small = tiny_llama(tokenizer, hidden=32, heads=2, kv_heads=1)
    small.model.save_pretrained(str(tmp_path / "small"))
    (bad / "model.safetensors").write_bytes((tmp_path / "small" / "model.safetensors").read_bytes())
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_model(str(bad), device="cpu")
