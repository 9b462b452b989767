"""A full check of the caches (``--verify-cache``), and running it after an unclean shutdown.

The everyday check of a cached file trusts a size and mtime equal to its record (re-hashing the
converted model on every start costs a second or more). Bit-rot and an edit that restores the
mtime keep both, so this check hashes every file of every converted model and vocabulary against
its integrity record and recomputes every KV snapshot's checksum. A damaged model or vocabulary
is moved aside (``NAME.broken``) and rebuilt on next use; a damaged snapshot is deleted (the
conversation is recomputed from its saved token ids).

A run that ends without releasing its run mark (``cache/runs/.PID.lock``, held through
engine.locks while the program runs; the kernel drops the lock of a killed process) was killed,
crashed or lost power: the next start sees the unheld mark and runs this check once."""
from __future__ import annotations

import atexit
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from engine.errors import is_disk_fault


@dataclass
class Verification:
    checked: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)   # one line each: what, why, what was done
    unreadable: list[str] = field(default_factory=list)  # the disk refused: left as it was

    def message(self) -> str:
        from engine.budget import fmt_bytes

        head = f"verified {self.checked} cached file(s), {fmt_bytes(self.bytes)}"
        if not self.problems and not self.unreadable:
            return head + ": all whole"
        return "; ".join([head] + self.problems + self.unreadable)


def _size(p: Path) -> int:
    try:
        return sum(f.stat().st_size for f in p.iterdir() if f.is_file()) if p.is_dir() else p.stat().st_size
    except OSError:
        return 0


def verify_cache(say: Optional[Callable[[str], None]] = None) -> Verification:
    """Hash every converted model, vocabulary, rotation file and snapshot against what was
    recorded."""
    from engine.atomic import TMP_MARK
    from engine.integrity import BROKEN, DIR_RECORD, check_dir, check_file, quarantine
    from engine.paths import cache_root
    from engine.sessions.location import env_sessions_folder
    from engine.sessions.snapshot import SUFFIX, file_problem

    out = Verification()
    root = cache_root()

    def entries(folder: Path, pick: Callable[[Path], bool]) -> list[Path]:
        try:
            return sorted(p for p in folder.iterdir() if pick(p) and TMP_MARK not in p.name
                          and not p.name.endswith(BROKEN) and not p.name.startswith("."))
        except OSError:
            return []

    def one(p: Path, check: Callable[[], Optional[str]], fix: Callable[[], str]) -> None:
        if say is not None:
            say(f"verifying {p.name}")
        try:
            problem = check()
        except OSError as e:
            if not is_disk_fault(e):
                raise
            out.unreadable.append(f"{p} could not be read ({e}); left as it was")
            return
        out.checked += 1
        out.bytes += _size(p)
        if problem is not None:
            out.problems.append(f"{p.name}: {problem}; {fix()}")

    def aside(p: Path) -> Callable[[], str]:
        def do() -> str:
            moved = quarantine(p)
            return f"moved aside to {moved.name if moved else '—'}, rebuilt on next use"
        return do

    for m in entries(root / "models", lambda p: p.is_dir() and (p / DIR_RECORD).is_file()):
        one(m, lambda m=m: check_dir(m, full=True), aside(m))
    for v in entries(root / "vocab", lambda p: p.is_file() and p.suffix == ".json"):
        one(v, lambda v=v: check_file(v, full=True), aside(v))
    for r in entries(root / "sparsity", lambda p: p.is_file() and p.suffix == ".safetensors"):
        one(r, lambda r=r: check_file(r, full=True), aside(r))  # LaRoSA rotations
    folders = [root / "sessions" / "snapshots"]
    extra = env_sessions_folder()
    if extra is not None:
        folders.append(extra / "snapshots")
    for folder in dict.fromkeys(folders):
        for s in entries(folder, lambda p: p.is_file() and p.name.endswith(SUFFIX)):
            def drop(s: Path = s) -> str:
                s.unlink(missing_ok=True)
                return "deleted (recomputed when its session is next opened)"
            one(s, lambda s=s: file_problem(s), drop)
    return out


# ---- the run mark ----------------------------------------------------------------------------------
_MARK: list = []  # this process's held mark (one per process, however often start-up runs)


def mark_running() -> bool:
    """Hold this process's run mark; True when an earlier run ended without releasing its own
    (those stale marks are removed). Never raises: a cache the disk refuses is not checked."""
    from engine.locks import FileLock, is_held
    from engine.paths import cache_root

    if _MARK:
        return False
    folder = cache_root() / "runs"
    unclean = False
    try:
        for p in folder.glob(".*.lock"):
            target = folder / p.name[1:-len(".lock")]
            if not is_held(target):  # (this very pid too: a container reuses pids)
                unclean = True
                p.unlink(missing_ok=True)
        lock = FileLock(folder / str(os.getpid()), "this run").acquire()
    except Exception:  # noqa: BLE001 — read-only or full cache: no mark, no check
        return unclean
    _MARK.append(lock)
    atexit.register(lock.release)
    return unclean
