"""Start-up cleanup of the program's own temporary files in its cache folders.

An atomic write (engine.atomic) renames its temporary file into place; a ``kill -9`` before the
rename leaves it behind (538 MB for a converted model). Only names this program makes are
touched — ``.NAME.tokenforge-XXXXXXXX.tmp`` and, from before that marker existed, mkstemp's
``.NAME.XXXXXXXX.tmp`` — and only those older than the running process, so a temporary file
another live tokenforge process is still writing is left alone (its lock, if any, is honoured)."""
from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from engine.atomic import TMP_MARK

_OWN = re.compile(r"^\.(.+)\.(?:" + re.escape(TMP_MARK) + r"[A-Za-z0-9_]{8}|[a-z0-9_]{8})\.tmp$")


@dataclass
class Cleanup:
    removed: list[Path] = field(default_factory=list)
    freed: int = 0

    def message(self) -> str:
        from engine.budget import fmt_bytes

        return (f"removed {len(self.removed)} stale temporary file(s) left by an interrupted run, "
                f"freed {fmt_bytes(self.freed)}")


def process_start_time() -> float:
    """Wall-clock start of this process (psutil; falls back to now)."""
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # pragma: no cover
        return time.time()


def is_own_temp(name: str) -> bool:
    return bool(_OWN.match(name))


def _target_locked(p: Path) -> bool:
    """The entry a temporary file is being written for is locked by a live writer."""
    from engine.locks import is_held

    m = _OWN.match(p.name)
    return bool(m) and is_held(p.parent / m.group(1))


def _newest_mtime(p: Path) -> float:
    newest = p.lstat().st_mtime
    if p.is_dir() and not p.is_symlink():
        for root, dirs, files in os.walk(p):
            for f in files + dirs:
                try:
                    newest = max(newest, os.lstat(os.path.join(root, f)).st_mtime)
                except OSError:
                    pass
    return newest


def _size(p: Path) -> int:
    if p.is_dir() and not p.is_symlink():
        total = 0
        for root, _, files in os.walk(p):
            for f in files:
                try:
                    total += os.lstat(os.path.join(root, f)).st_size
                except OSError:
                    pass
        return total
    return p.lstat().st_size


def clean_stale(folders: list[Path], older_than: Optional[float] = None) -> Cleanup:
    """Remove own temporary entries directly inside ``folders`` last modified before
    ``older_than`` (default: this process's start)."""
    cutoff = process_start_time() if older_than is None else older_than
    out = Cleanup()
    for folder in folders:
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        for p in entries:
            if not is_own_temp(p.name):
                continue
            try:
                if _newest_mtime(p) >= cutoff or _target_locked(p):
                    continue
                size = _size(p)
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            except OSError:
                continue
            out.removed.append(p)
            out.freed += size
    return out


#: how deep under the cache root start-up looks (cache/sessions/snapshots is two levels down)
DEPTH = 3


def _folders(top: Path, depth: int) -> list[Path]:
    """``top`` and the real folders under it, ``depth`` levels down (no symlinks followed, none
    of the program's own temporary folders entered: those are removed whole)."""
    out = [top]
    if depth <= 0:
        return out
    try:
        subs = sorted(p for p in top.iterdir()
                      if p.is_dir() and not p.is_symlink() and not is_own_temp(p.name))
    except OSError:
        return out
    for p in subs:
        out.extend(_folders(p, depth - 1))
    return out


def clean_cache() -> Cleanup:
    """The cache root and the folders under it (models, vocab, logs, sessions/snapshots, …),
    and the sessions folder when ``$TOKENFORGE_SESSIONS`` puts it elsewhere."""
    from engine.paths import cache_root
    from engine.sessions.location import env_sessions_folder

    root = cache_root()
    tops = [root] if root.is_dir() else []
    extra = env_sessions_folder()
    if extra is not None and extra.is_dir():
        tops.append(extra)
    folders: list[Path] = []
    for top in tops:
        for f in _folders(top, DEPTH):
            if f not in folders:
                folders.append(f)
    return clean_stale(folders)
