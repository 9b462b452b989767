"""Model loading: offline resolution, clear errors, the GGUF conversion cache, CLI exit codes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.errors import InputError, ModelLoadError, ModelNotFound
from engine.lm.model import bundled_gguf, eos_ids_of, load_model, resolve_source
from tinymodel import save_tiny


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
    with pytest.raises(InputError, match="device: must be one of auto, cpu, cuda, mps, cuda:N"):
        load_model("default", device="tpu")  # ModelConfig.device's declared bound


def test_local_directory_loads(tiny_dir):
    lm = load_model(str(tiny_dir))
    assert lm.name == tiny_dir.name and lm.config.num_hidden_layers == 2
    assert eos_ids_of(lm.model, lm.tokenizer)


@pytest.mark.slow  # a real process
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


def test_hf_id_found_in_the_local_cache(tmp_path, tiny_lm, monkeypatch):
    """An id present in the local Hugging Face cache loads from it (no network: the hub is
    unreachable here, and local_files_only never asks it); a second load is warm."""
    import huggingface_hub.constants as hf_constants

    hub = tmp_path / "hub"
    repo = hub / "models--tokenforge-test--tiny-llama"
    snap = repo / "snapshots" / ("0" * 40)
    save_tiny(tiny_lm, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src, name, _ = resolve_source("tokenforge-test/tiny-llama")
    assert src == snap.resolve() or src == snap
    lm = load_model("tokenforge-test/tiny-llama")
    assert lm.config.num_hidden_layers == 2 and lm.name.endswith("tiny-llama")
    ids = torch.tensor([[1, 2, 3]])
    assert torch.allclose(lm.model(ids).logits, tiny_lm.model(ids).logits, atol=1e-6)
    with pytest.raises(ModelNotFound, match="not available offline"):
        resolve_source("tokenforge-test/absent-model")


def test_remote_code_only_when_asked(tmp_path, tiny_lm):
    """A model whose config points at its own code: refused with a clear message (and the code
    never runs) unless trust_remote_code is asked for; then it runs."""
    d = save_tiny(tiny_lm, tmp_path / "custom")  # its own copy: the config is edited
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "modeling_custom.CustomConfig",
                       "AutoModelForCausalLM": "modeling_custom.CustomLM"}
    cfg["model_type"] = "tokenforge-custom"
    (d / "config.json").write_text(json.dumps(cfg))
    marker = tmp_path / "ran"
    (d / "modeling_custom.py").write_text(
        f"open({str(marker)!r}, 'w').write('yes')\nraise RuntimeError('user code ran')\n")
    with pytest.raises(ModelLoadError, match="trust-remote-code"):
        load_model(str(d))
    assert not marker.exists()
    with pytest.raises(Exception):
        load_model(str(d), trust_remote_code=True)
    assert marker.read_text() == "yes"
