"""Model loading: offline resolution, clear errors, the GGUF conversion cache, CLI exit codes."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import ModelLoadError, ModelNotFound
from engine.model import bundled_gguf, eos_ids_of, load_model, resolve_source


def test_bundled_model_found_and_cached(smol_lm):
    assert bundled_gguf().suffix == ".gguf"
    src = Path(smol_lm.source)
    assert (src / "config.json").exists() and list(src.glob("*.safetensors"))
    assert smol_lm.dtype == "float32" and smol_lm.device == "cpu"
    assert 2 in smol_lm.eos_ids  # <|im_end|> ends a ChatML answer
    assert smol_lm.context_length == 8192


def test_unknown_model_ids_fail_fast(tmp_path):
    with pytest.raises(ModelNotFound, match="not available offline"):
        resolve_source("nobody/no-such-model-xyz")
    with pytest.raises(ModelNotFound):
        resolve_source(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFound, match="config.json"):
        resolve_source(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFound):
        resolve_source("not a model at all")


def test_corrupt_gguf_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENFORGE_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 4096)
    with pytest.raises(ModelLoadError, match="cannot read GGUF"):
        load_model(str(bad))
    # nothing half-written is left in the cache
    models = tmp_path / "cache" / "models"
    assert not models.exists() or not any(models.iterdir())


def test_bad_device_and_dtype():
    with pytest.raises(ModelLoadError):
        load_model("default", dtype="int3")
    with pytest.raises(ModelLoadError):
        load_model("default", device="tpu")


def test_local_directory_loads(tmp_path, tiny_lm):
    tiny_lm.model.save_pretrained(str(tmp_path / "tiny"))
    tiny_lm.tokenizer.save_pretrained(str(tmp_path / "tiny"))
    lm = load_model(str(tmp_path / "tiny"))
    assert lm.name == "tiny" and lm.config.num_hidden_layers == 2
    assert eos_ids_of(lm.model, lm.tokenizer)


def test_cli_unknown_model_exits_2():
    r = subprocess.run([sys.executable, "-m", "app.cli", "chat", "--model", "nobody/nothing", "--prompt", "hi"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "not available offline" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_chat_prompt_answers(smol_lm):
    r = subprocess.run([sys.executable, "-m", "app.cli", "chat", "--prompt", "What is the capital of France?",
                        "--temperature", "0", "--max-new-tokens", "12"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "tok/s" in r.stderr
