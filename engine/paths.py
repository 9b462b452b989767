"""Where runtime caches live: ``$TOKENFORGE_CACHE`` or the project's top-level ``cache/``."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("TOKENFORGE_CACHE")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").exists():
        return repo / "cache"
    return Path.home() / ".cache" / "tokenforge"


def cache_dir(*parts: str) -> Path:
    p = cache_root().joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p
