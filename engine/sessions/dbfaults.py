"""What an sqlite error means for the sessions database file, and what to do about it.

Only damage moves a file aside: sqlite's NOTADB or CORRUPT (a malformed schema or page), or a
schema that is not ours. The disk's faults — full (SQLITE_FULL; and SQLITE_IOERR when sqlite
cannot grow its ``-shm`` file on a full disk), read-only, no permission — leave the file exactly
as it is and become one :class:`~engine.errors.StorageError` naming the path and what was kept.
Reading a full disk as corruption once renamed a healthy database and started an empty one."""
from __future__ import annotations

import os
import shutil
import sqlite3
import time
from pathlib import Path

from engine.errors import DiskFull, StorageError

#: sqlite's primary result codes (the low byte of an extended code) that say what failed
CORRUPT = {11, 26}           # SQLITE_CORRUPT, SQLITE_NOTADB: the bytes are not a usable database
BUSY = {5, 6}                # SQLITE_BUSY, SQLITE_LOCKED: another connection holds it
FULL = 13                    # SQLITE_FULL
IOERR = 10                   # SQLITE_IOERR (a failed -shm extension on a full disk lands here)
DENIED = {3: "permission denied", 8: "the database or its folder is read-only",
          14: "the file cannot be opened (permissions or a missing folder)", 23: "access denied"}


def kind(e: sqlite3.Error) -> str:
    """'corrupt' (move the file aside), 'busy', 'full', 'denied', 'io' (the disk's fault: leave
    the file alone) or 'other' (a query of ours failed on the file's own tables)."""
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        code &= 0xFF
        if code in CORRUPT:
            return "corrupt"
        if code in BUSY:
            return "busy"
        if code == FULL:
            return "full"
        if code in DENIED:
            return "denied"
        if code == IOERR:
            return "io"
        return "other"
    text = str(e).lower()  # an exception made without a code: read its message
    if "not a database" in text or "malformed" in text:
        return "corrupt"
    if "locked" in text or "busy" in text:
        return "busy"
    if "disk is full" in text:
        return "full"
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return "denied"
    if "i/o error" in text:
        return "io"
    return "other"


def free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 1 << 62


def storage_error(e: sqlite3.Error, how: str, path: Path, doing: str, kept: str,
                  env_var: str) -> StorageError:
    """One message for a disk fault sqlite reported: the path, why, and what was kept."""
    code = (getattr(e, "sqlite_errorcode", None) or 0) & 0xFF
    if how == "io" and free_bytes(path.parent) < (1 << 20):
        how = "full"  # sqlite says "disk I/O error" when it cannot grow the -shm file
    if how == "full":
        return DiskFull(f"cannot {doing} the sessions database {path}: the disk is full; {kept}",
                        hint="free some space and try again")
    why = DENIED.get(code) or f"sqlite: {e}"
    return StorageError(f"cannot {doing} the sessions database {path}: {why}; {kept}",
                        hint=f"or set {env_var} to a writable folder")


def db_files(path: Path) -> list[Path]:
    """The database and its side files."""
    return [path.with_name(path.name + sfx) for sfx in ("", "-wal", "-shm")]


def forget_created(path: Path, created: list[Path]) -> None:
    """After a failed open, remove a database file that call created (not there before) and
    that holds no table — at most its header page, an empty ``-wal`` — with the side files it
    created. Anything that existed, or holds data, stays."""
    if path not in created:
        return
    try:
        with open(path, "rb") as fh:
            head = fh.read(100)
        size = path.stat().st_size
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size:
            return
    except OSError:
        return
    page = int.from_bytes(head[16:18], "big") if len(head) == 100 else 0
    page = 65536 if page == 1 else page  # the header's encoding of the largest page size
    if size and (page < 512 or size > page):
        return  # a second page means a table: not ours to remove
    for p in created:
        try:
            p.unlink()
        except OSError:
            pass


def probe_write(db: sqlite3.Connection) -> None:
    """A write rolled back: a file sqlite could open only read-only (mode 444, a read-only
    mount) raises READONLY here, at open, instead of when the first turn is saved (after the
    answer was shown). ``BEGIN IMMEDIATE`` alone passes in WAL mode."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("UPDATE meta SET value=value WHERE key='app'")
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")


def forget_side_files(path: Path, created: list[Path]) -> None:
    """After a failed open of an existing database, remove the ``-wal`` / ``-shm`` files that
    call created (sqlite makes them even for a read-only file, with its mode): an empty ``-wal``
    holds nothing and ``-shm`` is only an index of it. Files that were there stay."""
    for p in db_files(path)[1:]:
        if p not in created:
            continue
        try:
            if p.name.endswith("-wal") and p.stat().st_size:
                continue
            p.unlink()
        except OSError:
            pass


def move_aside(path: Path) -> Path:
    """Rename a damaged or foreign database (and its side files) to ``NAME.bad-<time>``."""
    aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while aside.exists():
        aside = aside.with_name(f"{aside.name}.{n}")
        n += 1
    os.replace(path, aside)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, aside.with_name(aside.name + suffix))
    return aside
