"""A GGUF's conversion into the cache checks memory before the converter reads a tensor: the
parameter count comes from the header's tensor shapes (the gguf package's reader; no data read),
de-quantizing to float32 needs parameters × 4 bytes twice plus the file, and when that exceeds the
share of available memory a model may take, one ModelLoadError says so and nothing is written.
The GGUF files here are written by the gguf package itself; the available memory is injected
(TOKENFORGE_MEMORY_BYTES)."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import ModelLoadError
from engine.lm.preflight import CONVERSION_FP32_COPIES, check_conversion_memory, gguf_params
from gguffile import PARAMS, write_gguf

@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("TOKENFORGE_CACHE", str(root))
    return root


def test_parameters_are_counted_from_the_header(tmp_path):
    assert gguf_params(write_gguf(tmp_path / "m.gguf")) == (PARAMS, 3)


def test_need_is_twice_the_fp32_parameters_plus_the_file(tmp_path, monkeypatch):
    g = write_gguf(tmp_path / "m.gguf")
    need = PARAMS * 4 * CONVERSION_FP32_COPIES + g.stat().st_size
    monkeypatch.setenv("TOKENFORGE_MEMORY_BYTES", str(need * 2))
    assert check_conversion_memory(g) == PARAMS
    monkeypatch.setenv("TOKENFORGE_MEMORY_BYTES", str(need))  # 90 % of it is too little
    with pytest.raises(ModelLoadError, match=f"{PARAMS:,} parameters in 3 tensors"):
        check_conversion_memory(g)


def test_too_large_conversion_is_refused_before_anything_is_written(tmp_path, cache, monkeypatch):
    from engine.lm.model import converted_dir, load_model

    g = write_gguf(tmp_path / "m.gguf", {"token_embd.weight": (4096, 1024)})
    monkeypatch.setenv("TOKENFORGE_MEMORY_BYTES", str(8 << 20))  # 4 M parameters need 32 MiB
    with pytest.raises(ModelLoadError) as ei:
        load_model(str(g), device="cpu")
    msg = str(ei.value)
    assert "converting m.gguf needs about" in msg and "4,194,304 parameters" in msg
    assert "8.0 MiB of memory is available" in msg
    target = converted_dir(g)
    assert not target.exists()
    left = [p.name for p in target.parent.iterdir()] if target.parent.exists() else []
    assert left == []  # no partial entry, no lock file


def test_damaged_entry_is_left_in_place_when_conversion_cannot_fit(tmp_path, cache, monkeypatch):
    from engine.lm.model import converted_dir, load_model

    g = write_gguf(tmp_path / "m.gguf", {"token_embd.weight": (4096, 1024)})
    target = converted_dir(g)
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    monkeypatch.setenv("TOKENFORGE_MEMORY_BYTES", str(8 << 20))
    with pytest.raises(ModelLoadError, match="converting m.gguf needs"):
        load_model(str(g), device="cpu")
    assert (target / "config.json").read_text() == "{}"
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


@pytest.mark.parametrize("cut", [3, 40, -8])
def test_truncated_header_is_one_error(tmp_path, cut):
    g = write_gguf(tmp_path / "m.gguf")
    data = g.read_bytes()
    g.write_bytes(data[:cut] if cut > 0 else data[:64])
    with pytest.raises(ModelLoadError, match="m.gguf: its header is unreadable"):
        gguf_params(g)


def test_bundled_model_conversion_is_checked(cache, monkeypatch):
    """The bundled GGUF's first-run conversion: refused with its real parameter count when the
    memory cannot hold it (the header is read; the converter never starts)."""
    from engine.lm.model import bundled_gguf, converted_dir, load_model

    monkeypatch.setenv("TOKENFORGE_MEMORY_BYTES", str(256 << 20))
    with pytest.raises(ModelLoadError, match=r"134,515,008 parameters in 272 tensors"):
        load_model("default", device="cpu")
    assert not converted_dir(bundled_gguf()).exists()
