"""Where saved sessions live: ``$TOKENFORGE_SESSIONS`` names the database file itself
(``~/notes.db``) or a folder holding ``sessions.db``; without it, ``<cache>/sessions/``. The KV
snapshots, the writer locks and the weights-hash book go into the database's folder."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from engine.errors import storage_error
from engine.paths import cache_dir, expand_user

ENV_VAR = "TOKENFORGE_SESSIONS"


def _env_target() -> tuple[Optional[Path], bool]:
    """(``$TOKENFORGE_SESSIONS``, whether it names the database file rather than its folder):
    a file when it is one, or when it does not exist and its name has a suffix (``notes.db``);
    otherwise a folder (created), holding ``sessions.db``."""
    env = os.environ.get(ENV_VAR)
    if not env:
        return None, False
    p = expand_user(env, ENV_VAR)
    if p.exists() or p.is_symlink():
        return p, not p.is_dir()
    return p, bool(p.suffix) and not env.endswith(os.sep)


def sessions_dir() -> Path:
    """The folder of the database and the KV snapshots: ``$TOKENFORGE_SESSIONS`` (or the folder
    of the file it names) or ``<cache>/sessions``."""
    env, is_file = _env_target()
    try:
        if env is not None:
            p = env.parent if is_file else env
            p.mkdir(parents=True, exist_ok=True)
            return p
        return cache_dir("sessions")
    except OSError as e:  # full, read-only, no permission: one message, nothing else touched
        raise storage_error(e, getattr(e, "filename", None) or env or "the sessions folder",
                            "no session was changed", "create the sessions folder") from None


def sessions_db() -> Path:
    """The sessions database: ``$TOKENFORGE_SESSIONS`` when it names a file, else
    ``sessions.db`` in :func:`sessions_dir`."""
    env, is_file = _env_target()
    return env if env is not None and is_file else sessions_dir() / "sessions.db"


def env_sessions_folder() -> Optional[Path]:
    """The sessions folder ``$TOKENFORGE_SESSIONS`` names (not created), or None."""
    try:
        env, is_file = _env_target()
    except Exception:  # noqa: BLE001 — an unusable value is reported where it is used
        return None
    if env is None:
        return None
    return env.parent if is_file else env
