"""Where runtime caches live: ``$TOKENFORGE_CACHE`` or the project's top-level ``cache/``."""
from __future__ import annotations

import os
from pathlib import Path

from engine.errors import EngineError


def cache_root() -> Path:
    env = os.environ.get("TOKENFORGE_CACHE")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").exists():
        return repo / "cache"
    return Path.home() / ".cache" / "tokenforge"


def cache_dir(*parts: str) -> Path:
    root = cache_root()
    p = root.joinpath(*parts)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except (NotADirectoryError, FileExistsError):
        bad = next((q for q in [root, *[root.joinpath(*parts[:i + 1]) for i in range(len(parts))]]
                    if q.exists() and not q.is_dir()), p)
        raise EngineError(f"cache folder {bad} is a file, not a folder",
                          hint="set TOKENFORGE_CACHE to a folder" if bad == root else
                          f"move {bad} away") from None
    except PermissionError:
        raise EngineError(f"cache folder {p} cannot be created (permission denied)",
                          hint="set TOKENFORGE_CACHE to a writable folder") from None
    return p
