"""Where runtime caches live: ``$TOKENFORGE_CACHE`` or the project's top-level ``cache/``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from engine.errors import EngineError, InputError


def expand_user(path: str | Path, what: str = "path") -> Path:
    """``~`` and ``~user`` expanded; a user that does not exist (or no home at all) is one
    clear InputError naming the option, never pathlib's RuntimeError."""
    s = str(path)
    if not s.startswith("~"):
        return Path(s)
    try:
        return Path(s).expanduser()
    except RuntimeError:
        user = s[1:].split("/", 1)[0]
        why = f"there is no user named {user!r}" if user else "the home directory is unknown"
        raise InputError(f"{what}: cannot expand {s.split('/', 1)[0]} ({why})",
                         hint="write the path out in full") from None


def cache_root() -> Path:
    env = os.environ.get("TOKENFORGE_CACHE")
    if env:
        return expand_user(env, "TOKENFORGE_CACHE")
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


def _user_path(name: str, env: Optional[str], xdg: str, home_default: tuple[str, ...]) -> Path:
    if env:
        value = os.environ.get(env)
        if value:
            return expand_user(value, env)
    base = os.environ.get(xdg) or str(Path.home().joinpath(*home_default))
    return expand_user(base, xdg) / "tokenforge" / name


def config_file(name: str, env: Optional[str] = None) -> Path:
    """Where a user configuration file lives — the one rule for every such file (profiles
    ``config.toml``, ``settings.json``, ``keymap.json``): ``$ENV`` when that variable is set, else
    ``$XDG_CONFIG_HOME/tokenforge/NAME``, else ``~/.config/tokenforge/NAME``."""
    return _user_path(name, env, "XDG_CONFIG_HOME", (".config",))


def data_dir(name: str, env: Optional[str] = None) -> Path:
    """A per-user data folder (exports): ``$ENV``, else ``$XDG_DATA_HOME/tokenforge/NAME``, else
    ``~/.local/share/tokenforge/NAME``. Not created here."""
    return _user_path(name, env, "XDG_DATA_HOME", (".local", "share"))
