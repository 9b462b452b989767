"""Lock files that serialise writers of one cache entry or one results file, so two processes
never do the same work twice or interleave their lines.

``.NAME.lock`` next to the target holds an ``fcntl.flock`` and says who holds it (pid, command,
start time), so the second process can name the holder. The kernel drops the lock when its holder
dies (even by ``kill -9``): a stale file never blocks anyone, and it is removed on release. The
inode check after locking closes the race with a releaser that unlinks the file."""
from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Callable, Optional

from engine.errors import EngineError, storage_error


class LockHeld(EngineError):
    """Another process is writing the same file or cache entry."""


def lock_path(target: Path | str) -> Path:
    t = Path(target)
    return t.parent / f".{t.name}.lock"


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8")[:4096])
        started = time.strftime("%H:%M:%S", time.localtime(float(info.get("started", 0))))
        return f"process {int(info.get('pid', 0))} ({str(info.get('command', '?'))[:60]}, since {started})"
    except (OSError, ValueError, TypeError, AttributeError):
        return "another process"


class FileLock:
    """``with FileLock(target, what):`` — exclusive; ``wait`` seconds of patience (0 = fail at
    once with LockHeld naming the holder; None = wait as long as it takes)."""

    def __init__(self, target: Path | str, what: str, wait: Optional[float] = 0.0,
                 on_wait: Optional[Callable[[str], None]] = None) -> None:
        self.target = Path(target)
        self.path = lock_path(self.target)
        self.what = what
        self.wait = wait
        self.on_wait = on_wait
        self.fd: Optional[int] = None

    def acquire(self) -> "FileLock":
        """Lock, or raise LockHeld (a live holder, named) or StorageError (the disk refused the
        lock file: full, read-only, no permission — then no lock file is left behind)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise storage_error(e, self.path, f"{self.what} was not touched", "create the lock") from None
        deadline = None if self.wait is None else time.monotonic() + self.wait
        told = False
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise storage_error(e, self.path, f"{self.what} was not touched", "create the lock") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = _holder_text(self.path)
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockHeld(f"{self.what} is in use by {holder}",
                                   hint=f"wait for it to finish, or stop it (lock {self.path})") from None
                if not told and self.on_wait is not None:
                    self.on_wait(f"waiting for {holder}, which is writing {self.what}")
                    told = True
                time.sleep(0.2)
                continue
            try:  # the file we locked must still be the one at the path
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            break
        info = {"pid": os.getpid(), "command": " ".join(["tokenforge", *sys.argv[1:3]]),
                "started": time.time()}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(info).encode())
        except OSError as e:  # e.g. a full disk: leave no empty lock file behind
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(fd)
            raise storage_error(e, self.path, f"{self.what} was not touched", "create the lock") from None
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)  # closing drops the flock
        self.fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, et: Optional[type], e: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.release()


def is_held(target: Path | str) -> bool:
    """Whether a live process holds the lock of ``target`` (probes without keeping it)."""
    p = lock_path(target)
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
