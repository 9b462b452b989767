"""Shared fixtures: the bundled tokenizer, a tiny random Llama on it, and the bundled model."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smol_lm():
    """The bundled SmolLM2-135M-Instruct (converted once into cache/models)."""
    from engine.lm.model import load_model

    return load_model("default")


@pytest.fixture(scope="session")
def tokenizer(smol_lm):
    return smol_lm.tokenizer


@pytest.fixture(scope="session")
def tiny_lm(tokenizer):
    from engine.lm.tiny import tiny_llama

    return tiny_llama(tokenizer, seed=0)


@pytest.fixture(autouse=True)
def _private_user_state(monkeypatch, tmp_path_factory):
    """No test reads the user's real config or writes into their saved sessions."""
    base = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(base / "config"))
    monkeypatch.delenv("TOKENFORGE_CONFIG", raising=False)
    monkeypatch.setenv("TOKENFORGE_SESSIONS", str(base / "sessions"))


@pytest.fixture(autouse=True)
def _no_user_settings_file(monkeypatch, tmp_path):
    """No test reads or writes the user's saved TUI settings (app/settings_file.py)."""
    monkeypatch.setenv("TOKENFORGE_SETTINGS", str(tmp_path / "settings.json"))
