"""One export format for every job's result, and one naming rule for export files.

Every JSON export (attack, tree search, dashboard, chat) is the same envelope, so a script reads
any of them the same way::

    {"format": "tokenforge-export/1", "kind": "advtok" | "tree" | "bench" | "chat",
     "state": "finished" | "cancelled", "model": "<model name>" | null,
     "settings": {...the job's inputs...},
     "started_at": ISO-8601 | null, "finished_at": ISO-8601 | null, "exported_at": ISO-8601,
     "result": {...the job's own result...}}

Export files are named ``<stem>-YYYYmmdd-HHMMSS[-n].<suffix>`` in the export folder; ``-n`` is
added when a file of that name (any of the suffixes written together) already exists, so an
earlier export is never replaced. Files are written atomically (engine.atomic)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Optional

FORMAT = "tokenforge-export/1"


def iso_time(t: Optional[float] = None) -> Optional[str]:
    """Local time with its UTC offset, e.g. 2026-12-05T17:02:03+0000 (None stays None)."""
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t))


def job_document(kind: str, result: Any, *, settings: Optional[dict[str, Any]] = None,
                 model: Optional[str] = None, state: str = "finished",
                 started_at: Optional[float] = None,
                 finished_at: Optional[float] = None) -> dict[str, Any]:
    """The envelope around one job's ``result`` (a dict, or anything with ``to_dict()``).
    ``started_at``/``finished_at`` are epoch seconds (``time.time()``)."""
    body = result.to_dict() if hasattr(result, "to_dict") else result
    return {"format": FORMAT, "kind": kind, "state": state, "model": model,
            "settings": dict(settings or {}), "started_at": iso_time(started_at),
            "finished_at": iso_time(finished_at), "exported_at": iso_time(time.time()),
            "result": body}


def unique_paths(folder: Path | str, stem: str, suffixes: Iterable[str] = (".json",)) -> list[Path]:
    """Fresh, time-stamped paths in ``folder``, one per suffix, none of which exists yet."""
    from engine.paths import expand_user

    folder = expand_user(folder, "export folder")
    base = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    suffixes = list(suffixes)
    n = 1
    while True:
        name = base if n == 1 else f"{base}-{n}"
        paths = [folder / f"{name}{s}" for s in suffixes]
        if not any(p.exists() for p in paths):
            return paths
        n += 1


def write_job_json(path: Path | str, doc: dict[str, Any]) -> Path:
    """Write an envelope (``job_document``) atomically; the folder is created if missing."""
    from engine.atomic import write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, doc)
    return path


def export_job(folder: Path | str, stem: str, kind: str, result: Any, **envelope: Any) -> Path:
    """``job_document`` written to a fresh ``<stem>-<time>.json`` in ``folder``; returns it.
    Raises OSError (folder not writable) or TypeError/ValueError (a result that is not JSON)."""
    (path,) = unique_paths(folder, stem)
    return write_job_json(path, job_document(kind, result, **envelope))
