"""Integrity records for cached artefacts, so a cache heals itself instead of failing forever.

Every cache entry carries a record of what was written — each file's size and SHA-256 — checked
on load. A missing, truncated, foreign or altered entry is reported once, moved aside (one
``NAME.broken`` copy is kept for inspection; an older one is replaced) and rebuilt by the caller.

A directory entry (a converted model) keeps its record in ``INTEGRITY.json`` inside it; a single
file (a vocabulary) in ``NAME.integrity`` next to it. Re-hashing 538 MB of weights costs
~1.2 s here, so a file whose size and mtime still equal the record's is trusted; any write to it
changes its mtime and forces the full hash (the record's stat fields are then refreshed)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path
from typing import Callable, Optional, Sequence

from engine.atomic import write_bytes, write_text
from engine.errors import InputError

FORMAT = "tokenforge-integrity"
VERSION = 1
DIR_RECORD = "INTEGRITY.json"
BROKEN = ".broken"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                return h.hexdigest()
            h.update(b)


def _entry(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "sha256": sha256_file(path), "mtime_ns": st.st_mtime_ns}


def file_record_path(path: Path | str) -> Path:
    p = Path(path)
    return p.parent / f"{p.name}.integrity"


def _write_record(where: Path, files: dict[str, dict]) -> None:
    write_text(where, json.dumps({"format": FORMAT, "version": VERSION, "files": files},
                                 indent=1, sort_keys=True) + "\n")


def _refresh_record(where: Path, files: dict[str, dict]) -> None:
    """Rewrite a record after a successful check; a disk that refuses it (full, read-only)
    only means the next check hashes again."""
    from engine.errors import StorageError

    try:
        _write_record(where, files)
    except StorageError:
        pass


def _read_record(where: Path) -> tuple[Optional[dict[str, dict]], str]:
    """(files, "") or (None, why the record is unusable)."""
    from engine.bounded_json import load

    if not where.exists():
        return None, "no integrity record"
    try:
        obj = load(where, "integrity record", max_bytes=1 << 20)
    except InputError as e:
        return None, f"integrity record unreadable ({e})"
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("version") != VERSION:
        return None, "integrity record of another format"
    files = obj.get("files")
    if not isinstance(files, dict) or not files:
        return None, "integrity record lists no files"
    for name, e in files.items():
        if (not isinstance(name, str) or "/" in name or name.startswith(".")
                or not isinstance(e, dict) or not isinstance(e.get("size"), int)
                or not isinstance(e.get("sha256"), str) or not isinstance(e.get("mtime_ns"), int)):
            return None, "integrity record malformed"
    return files, ""


def _check_files(folder: Path, files: dict[str, dict], full: bool = False) -> tuple[Optional[str], bool]:
    """(problem or None, whether any file was re-hashed and matched: refresh its stat fields).
    ``full`` hashes every file, whatever its mtime says (bit-rot keeps the mtime)."""
    refreshed = False
    for name, e in sorted(files.items()):
        p = folder / name
        try:
            st = p.stat()
        except OSError:
            return f"{name} is missing", False
        if not p.is_file():
            return f"{name} is not a file", False
        if st.st_size != e["size"]:
            how = "truncated" if st.st_size < e["size"] else "longer than recorded"
            return f"{name} is {how} ({st.st_size:,} of {e['size']:,} bytes)", False
        if full or st.st_mtime_ns != e["mtime_ns"]:
            if sha256_file(p) != e["sha256"]:
                return f"{name} does not match its recorded hash (modified or damaged)", False
            refreshed = refreshed or e["mtime_ns"] != st.st_mtime_ns
            e["mtime_ns"] = st.st_mtime_ns
    return None, refreshed


# ---- directory entries -------------------------------------------------------------------------
def record_dir(folder: Path | str) -> None:
    """Write the record of every regular file in ``folder`` (call on the temporary directory
    before the atomic rename: the record describes exactly what was written)."""
    folder = Path(folder)
    files = {p.name: _entry(p) for p in sorted(folder.iterdir())
             if p.is_file() and p.name != DIR_RECORD and not p.name.startswith(".")}
    _write_record(folder / DIR_RECORD, files)


def check_dir(folder: Path | str, required: Sequence[str] = (),
              adopt: Optional[Callable[[Path], Optional[str]]] = None,
              full: bool = False) -> Optional[str]:
    """None when ``folder`` matches its record and holds ``required``; else the problem. A
    folder without a record (written before records existed) is adopted when ``adopt`` finds
    nothing wrong with it (it returns a problem or None): its record is written now."""
    folder = Path(folder)
    if not folder.is_dir():
        return "not a directory"
    missing = [r for r in required if not (folder / r).is_file()]
    if missing:
        return f"{', '.join(missing)} missing"
    files, why = _read_record(folder / DIR_RECORD)
    if files is None:
        if why == "no integrity record" and adopt is not None:
            problem = adopt(folder)
            if problem is None:
                from engine.errors import StorageError

                try:
                    record_dir(folder)
                except StorageError:  # no room for the record: adopted again next time
                    pass
            return problem
        return why
    problem, refreshed = _check_files(folder, files, full)
    if problem is None and refreshed:
        _refresh_record(folder / DIR_RECORD, files)
    return problem


# ---- single-file entries -----------------------------------------------------------------------
def write_file(path: Path | str, data: bytes) -> None:
    """Atomic write of a cached file, then its record (a crash between the two leaves a file
    without a record, which the next check reports and rebuilds)."""
    path = Path(path)
    write_bytes(path, data)
    _write_record(file_record_path(path), {path.name: _entry(path)})


def check_file(path: Path | str, full: bool = False) -> Optional[str]:
    path = Path(path)
    if not path.is_file():
        return "missing" if not path.exists() else "not a regular file"
    files, why = _read_record(file_record_path(path))
    if files is None:
        return why
    if set(files) != {path.name}:
        return "integrity record names other files"
    problem, refreshed = _check_files(path.parent, files, full)
    if problem is None and refreshed:
        _refresh_record(file_record_path(path), files)
    return problem


# ---- moving a bad entry aside ------------------------------------------------------------------
def quarantine(path: Path | str) -> Optional[Path]:
    """Move a bad entry (and a file's record) aside as ``NAME.broken``, replacing an older
    broken copy; None when there was nothing to move."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    dest = path.parent / (path.name + BROKEN)
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest, ignore_errors=True)
    elif dest.exists() or dest.is_symlink():
        dest.unlink()
    os.replace(path, dest)
    rec = file_record_path(path)
    if rec.exists():
        rec.unlink()
    return dest


# ---- structural checks -------------------------------------------------------------------------
def safetensors_problem(path: Path | str) -> Optional[str]:
    """A safetensors file's header must parse and its tensors must end exactly at the file's
    end: catches truncation and foreign files without reading the weights."""
    from engine.bounded_json import BadJSON, loads

    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return f"{p.name} is truncated (no header)"
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 << 20):
                return f"{p.name} has a bad header length"
            header = loads(fh.read(n), p.name)
    except OSError as e:
        return f"{p.name} unreadable ({e.strerror or e})"
    except BadJSON as e:
        return f"{p.name} header is not JSON ({e})"
    if not isinstance(header, dict):
        return f"{p.name} header is not an object"
    end = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        offs = t.get("data_offsets") if isinstance(t, dict) else None
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)):
            return f"{p.name}: tensor {name!r} has no data offsets"
        end = max(end, offs[1])
    if 8 + n + end != size:
        how = "truncated" if 8 + n + end > size else "longer than its tensors"
        return f"{p.name} is {how} ({size:,} bytes, its header says {8 + n + end:,})"
    return None
