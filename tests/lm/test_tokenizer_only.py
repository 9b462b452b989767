"""The tokenizer alone (``load_tokenizer(convert=False)``, what the ``tokenizer`` fixture uses):
an unconverted GGUF's tokenizer is read from the file itself, nothing is written to the cache,
and it is the same tokenizer as the converted model's."""
from __future__ import annotations

import json

import pytest

from engine.errors import ModelLoadError
from engine.lm.model import load_tokenizer


def _nothing_converted(cache):
    models = cache / "models"
    return not models.exists() or not any(models.iterdir())


def test_unconverted_gguf_tokenizer_equals_the_models(tmp_path, monkeypatch, smol_lm):
    monkeypatch.setenv("TOKENFORGE_CACHE", str(tmp_path / "cache"))
    tok = load_tokenizer("default", convert=False)
    assert _nothing_converted(tmp_path / "cache")
    ref = smol_lm.tokenizer  # loaded from the converted copy
    assert json.loads(tok.backend_tokenizer.to_str()) == json.loads(ref.backend_tokenizer.to_str())
    assert tok.special_tokens_map == ref.special_tokens_map
    assert tok.chat_template == ref.chat_template and tok.pad_token_id == ref.pad_token_id
    text = "naïve café au lait, 中文 and 🦜 parrots <|im_end|>\n"
    assert tok(text)["input_ids"] == ref(text)["input_ids"]
    chat = [{"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(chat, tokenize=False) == ref.apply_chat_template(chat, tokenize=False)


def test_corrupt_gguf_tokenizer_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENFORGE_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 4096)
    with pytest.raises(ModelLoadError, match="broken.gguf"):
        load_tokenizer(str(bad), convert=False)
    assert _nothing_converted(tmp_path / "cache")
