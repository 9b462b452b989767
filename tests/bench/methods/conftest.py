"""Fixtures for the method tests: a one-layer tiny Llama (its keys depend only on token and
position, so evicted caches can be checked exactly against a fresh forward) and a sample text."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def tiny1_lm(tokenizer):
    from engine.lm.tiny import tiny_llama

    return tiny_llama(tokenizer, seed=1, layers=1)


@pytest.fixture(scope="session")
def sample_text() -> str:
    """English prose shipped with the repo (the suite's held-out prose file)."""
    from engine.bench.suite import load_suite

    return load_suite("core-v1").prose

