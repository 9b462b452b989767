"""One writer per saved session: two processes continuing the same session would each append
turns to the branch they opened, and one of them would end up hidden on a side branch. The
writer holds a lock file (engine.locks) beside the database for as long as it has the session
open; a second one is refused at once, naming the process that holds it. Renaming and deleting
take the same lock: a session is never renamed or deleted under a chat that is writing it."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

from engine.locks import FileLock


def session_lock(db_path: Path, name: str) -> FileLock:
    """The (not yet acquired) writer lock of session ``name`` in the database at ``db_path``:
    ``locks/.session-<hash of the name>.lock`` next to it (names may hold any character)."""
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return FileLock(Path(db_path).parent / "locks" / f"session-{digest}", f"session {name!r}")


def delete_session(store: Any, snapshots: Any, name: str) -> list[str]:
    """Delete session ``name`` under its writer lock: while a chat has it open (this process or
    another) the delete is refused with LockHeld naming the holder, and nothing is touched —
    else that chat would go on saving into a session that is gone. The KV snapshots it held
    that no other session uses are removed. Returns the removed snapshot keys."""
    with session_lock(store.path, name):
        keys = store.delete(name)
    in_use = store.snapshots_in_use()
    gone = [k for k in keys if k not in in_use]
    for k in gone:
        snapshots.remove(k)
    return gone


def rename_session(store: Any, old: str, new: str,
                   held: Optional[FileLock] = None) -> tuple[str, Optional[FileLock]]:
    """Rename session ``old`` to ``new`` under the writer locks of both names (a chat writing
    either is named in LockHeld; nothing changes). ``held``: the caller's own lock of ``old``
    (the chat that has it open renames it); it is released once renamed and the new name's
    lock is returned for the caller to hold. Returns (the new name as stored, that lock)."""
    from engine.sessions.store import _check_name

    new = _check_name(new)
    if new == old:
        store.rename(old, new)  # the store's own checks (the session exists)
        return new, held
    mine = held is not None
    first = held if mine else session_lock(store.path, old).acquire()
    try:
        second = session_lock(store.path, new).acquire()
        try:
            store.rename(old, new)
        except BaseException:
            second.release()
            raise
    finally:
        if not mine:
            first.release()
    if mine:  # the caller goes on writing it, under its new name
        held.release()
        return new, second
    second.release()
    return new, None
