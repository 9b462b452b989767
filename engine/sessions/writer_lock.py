"""One writer per saved session: two processes continuing the same session would each append
turns to the branch they opened, and one of them would end up hidden on a side branch. The
writer holds a lock file (engine.locks) beside the database for as long as it has the session
open; a second one is refused at once, naming the process that holds it."""
from __future__ import annotations

import hashlib
from pathlib import Path

from engine.locks import FileLock


def session_lock(db_path: Path, name: str) -> FileLock:
    """The (not yet acquired) writer lock of session ``name`` in the database at ``db_path``:
    ``locks/.session-<hash of the name>.lock`` next to it (names may hold any character)."""
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return FileLock(Path(db_path).parent / "locks" / f"session-{digest}", f"session {name!r}")
