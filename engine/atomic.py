"""Atomic file and directory writes: a reader (or a crash) never sees a half-written file.

Temporary names carry ``TMP_MARK`` so start-up cleanup (engine.tempclean) can tell the program's
own leftovers after a ``kill -9`` from anyone else's files. Replacing a file keeps its mode.

A refusal of the disk (full, read-only, no permission) is one :class:`engine.errors.StorageError`
naming the path and what was kept: a replaced file is left as it was, a new one is not created,
an appended line is added whole or not at all (a failed append is truncated back)."""
from __future__ import annotations

import json
import os
import stat
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator
from contextlib import contextmanager

from engine.errors import StorageError, storage_error

#: in every temporary name this module makes: ``.NAME.tokenforge-XXXXXXXX.tmp``
TMP_MARK = "tokenforge-"


def tmp_prefix(name: str) -> str:
    return f".{name}.{TMP_MARK}"


def _kept(path: Path, existed: bool) -> str:
    return f"{path.name} was left as it was" if existed else "nothing was written"


def _mkdir(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except StorageError:
        raise
    except OSError as e:
        raise storage_error(e, path.parent, "nothing was written", "create the folder") from None


def write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``path`` whole or not at all (a temporary sibling renamed into place)."""
    path = Path(path)
    _mkdir(path)
    existed = path.exists()
    try:  # replacing a file keeps its permissions (a 0600 file stays 0600)
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = 0o666 & ~_UMASK  # mkstemp makes 0600; give the user's normal mode
    try:
        fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(path.name), suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise storage_error(e, path, _kept(path, existed)) from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and not isinstance(e, StorageError):
            raise storage_error(e, path, _kept(path, existed)) from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once at import: os.umask is process-wide, so never toggle it later


def write_text(path: Path | str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, obj: Any, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextmanager
def atomic_dir(final: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success rename it to ``final`` in one step."""
    final = Path(final)
    _mkdir(final)
    existed = final.exists()
    try:
        tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(final.name), suffix=".tmp", dir=final.parent))
    except OSError as e:
        raise storage_error(e, final, _kept(final, existed)) from None
    try:
        yield tmp
        if final.exists():  # another process won the race: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, StorageError):
            raise storage_error(e, final, _kept(final, existed)) from None
        raise


def append_line(path: Path | str, line: str) -> None:
    """Append one complete line (with fsync) to a JSONL file, all or nothing: when the disk
    refuses part of it the file is truncated back to its old size (no torn last line), and a
    file this call created is removed again."""
    path = Path(path)
    _mkdir(path)
    if not line.endswith("\n"):
        line += "\n"
    data = memoryview(line.encode("utf-8"))
    existed = path.exists()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise storage_error(e, path, _kept(path, existed) if existed else "nothing was written",
                            "append to") from None
    try:
        old = os.fstat(fd).st_size
        try:
            while data:
                n = os.write(fd, data)
                data = data[n:]
            os.fsync(fd)
        except OSError as e:
            kept = f"the line was not added, {path.name} is as it was"
            try:
                os.ftruncate(fd, old)
                if not existed and old == 0:
                    os.unlink(path)
                    kept = "nothing was written"
            except OSError:
                kept = f"the line was not added; {path.name} may end in a partial line"
            raise storage_error(e, path, kept, "append to") from None
    finally:
        os.close(fd)
