"""Errors a user can cause. Each carries one clear message; front ends show it and keep running."""
from __future__ import annotations


class EngineError(Exception):
    """Base class for errors that are the input's fault, not a bug."""

    hint: str = ""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class InputError(EngineError, ValueError):
    """Bad user input: empty prompt, out-of-range setting, text the vocabulary cannot cover."""


class ModelNotFound(EngineError):
    """Unknown model id, missing directory, or a hub id not in the local cache (offline)."""


class ModelLoadError(EngineError):
    """A model file exists but cannot be loaded (corrupt GGUF, unsupported architecture)."""


class ContextOverflow(InputError):
    """A prompt longer than the model's context window."""


class StorageError(EngineError, OSError):
    """The disk refused: full, read-only, no permission, or an I/O error. Never a reason to
    treat a file as corrupt; the message names the path and says what was kept. Also an
    OSError (``errno`` kept), so code that tolerates a failed optional write still does."""


class DiskFull(StorageError):
    """No space left on the device (ENOSPC, a quota, or sqlite's "database or disk is full")."""


#: errno → (why, the error class) for the faults of the disk rather than of the data
_DISK_FAULTS = {"ENOSPC": ("the disk is full", DiskFull), "EDQUOT": ("the disk quota is used up", DiskFull),
                "EROFS": ("the file system is read-only", StorageError),
                "EACCES": ("permission denied", StorageError), "EPERM": ("permission denied", StorageError)}


def storage_error(e: OSError, path: object, kept: str = "", doing: str = "write") -> StorageError:
    """One clear error for an OSError of the disk: "cannot write PATH: the disk is full; KEPT"."""
    import errno

    why, cls = _DISK_FAULTS.get(errno.errorcode.get(e.errno or 0, ""), (None, StorageError))
    why = why or (e.strerror or str(e))
    hint = "free some space and try again" if cls is DiskFull else ""
    err = cls(f"cannot {doing} {path}: {why}" + (f"; {kept}" if kept else ""), hint=hint)
    err.errno = e.errno
    return err


def is_disk_fault(e: BaseException) -> bool:
    """An error of the disk rather than of the data (full, read-only, no permission, I/O):
    never a reason to move a file aside as damaged."""
    import errno

    if isinstance(e, StorageError):
        return True
    return isinstance(e, OSError) and errno.errorcode.get(e.errno or 0, "") in (*_DISK_FAULTS, "EIO")


def first_line(text: str, default: str = "") -> str:
    """The first line of a message (an exception's text can span a traceback's worth of lines,
    or be empty: then ``default``)."""
    return next(iter(text.splitlines()), default)
