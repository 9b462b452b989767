"""A tiny random model as a folder on disk (config, safetensors weights, the bundled tokenizer):
what ``--model PATH`` and the model picker load. The ``tiny_dir`` fixture (tests/conftest.py)
is the one such folder most tests need; ``save_tiny`` writes another where a test needs its own
layout (a Hugging Face cache snapshot, several models for the picker)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def save_tiny(lm: Any, folder: Path) -> Path:
    """Write ``lm`` (an engine.lm.tiny model) into ``folder`` (created with its parents)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(str(folder))
    lm.tokenizer.save_pretrained(str(folder))
    return folder
