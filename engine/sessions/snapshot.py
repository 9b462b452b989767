"""KV-cache snapshots on disk, so a reopened conversation prefills only its new tokens.

A snapshot is one safetensors file (tensors ``k``, ``v``: (layers, 1, kv_heads, n, head_dim),
``ids``: the n token ids the cache holds) named by a key over the weights hash, the cache dtype
and those ids. Nothing in it is trusted: before use the header, format, weights hash, dtype,
shapes, the ids themselves and a BLAKE2b checksum of the bytes are all compared with what the
caller expects; any mismatch deletes the file and the caller recomputes the cache (a wrong
cache would silently give wrong answers). Files are written atomically; the folder is held
under a size cap by deleting the least recently used snapshots first (a load touches its file).

Caches stay opaque to the rest of the engine: :func:`export_kv` / :func:`import_kv` are the one
place that knows both forwards' cache layouts (the lean path's shared buffer, the standard
path's ``DynamicCache``)."""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from engine.atomic import write_bytes
from engine.bounded_json import loads as bounded_loads  # bounded depth: never a RecursionError
from engine.bounded_json import read_text as bounded_read_text  # regular files only, bounded
from engine.lm.weights_hash import weights_hash  # the one recipe (engine/lm/weights_hash.py)

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

FORMAT = "tokenforge-kv-1"
SUFFIX = ".safetensors"


def weights_hash_for(lm: LoadedModel) -> str:
    """:func:`weights_hash` of a loaded model, remembered across processes for models loaded
    from a directory: keyed by the directory, each weight file's size and mtime, and every
    tensor's name and shape (so a resized embedding is noticed), the full hash (3 s for the
    bundled model here) is computed once per set of files. Assumes the weights in memory are
    the files' — in-place value edits that keep every shape are not seen (the hooks-based
    methods of the dashboard restore the model; nothing else edits weights)."""
    model = lm.model
    cached = getattr(model, "_tokenforge_weights_hash", None)
    if cached:
        return cached
    src = Path(str(getattr(lm, "source", "")))
    files = sorted(src.glob("*.safetensors")) if src.is_dir() else []
    if not files:
        return weights_hash(model)
    from engine.atomic import write_json
    from engine.sessions.store import sessions_dir

    h = hashlib.blake2b(digest_size=16)
    h.update(str(src.resolve()).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
    key = h.hexdigest()
    book = sessions_dir() / "weights-hashes.json"
    try:
        known = bounded_loads(bounded_read_text(book, "weights-hash book", 16 << 20), book.name)
        if not isinstance(known, dict):
            known = {}
    except (OSError, ValueError):
        known = {}
    if isinstance(known.get(key), str) and len(known[key]) == 32:
        try:
            model._tokenforge_weights_hash = known[key]
        except AttributeError:
            pass
        return known[key]
    digest = weights_hash(model)
    known[key] = digest
    try:
        write_json(book, dict(list(known.items())[-64:]))
    except OSError:
        pass
    return digest


def kv_layout(fwd: Any) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of the caches ``fwd`` makes."""
    if hasattr(fwd, "n_layers"):
        return int(fwd.n_layers), int(fwd.n_kv), int(fwd.head_dim)
    c = fwd.config
    heads = int(c.num_attention_heads)
    head_dim = int(getattr(c, "head_dim", None) or c.hidden_size // heads)
    return int(c.num_hidden_layers), int(getattr(c, "num_key_value_heads", None) or heads), head_dim


def export_kv(fwd: Any, cache: Any) -> tuple[Any, Any]:
    """K and V of a batch-1 cache as two contiguous CPU tensors (layers, 1, kv_heads, n, d)."""
    import torch

    n = fwd.cache_len(cache)
    if hasattr(cache, "store"):  # the lean path: one shared buffer, this cache's first n slots
        st = cache.store
        if st is None or n == 0:
            raise ValueError("empty cache")
        k, v = st.k[:, :, :, :n], st.v[:, :, :, :n]
    else:
        layers = fwd._layers(cache)
        if not layers:
            raise ValueError("empty cache")
        k = torch.stack([a[:, :, :n] for a, _ in layers])
        v = torch.stack([b[:, :, :n] for _, b in layers])
    if k.shape[1] != 1:
        raise ValueError("only batch-1 caches are snapshotted")
    return k.detach().cpu().contiguous(), v.detach().cpu().contiguous()


def import_kv(fwd: Any, k: Any, v: Any) -> Any:
    """A cache of ``fwd``'s own kind holding K and V (as made by :func:`export_kv`)."""
    from engine.lm.fastpath import LeanForward

    if isinstance(fwd, LeanForward):
        return fwd.kv.from_tensors(k, v)
    dev = fwd.device
    return fwd._build([(k[i].to(dev), v[i].to(dev)) for i in range(k.shape[0])])


def _digest(*blobs: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for b in blobs:
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _raw(t: Any) -> bytes:
    import torch

    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""


def snapshot_key(weights: str, dtype: str, ids: list[int]) -> str:
    from engine.sessions.store import pack_ids

    return _digest(weights.encode(), dtype.encode(), pack_ids(ids))


@dataclass
class Loaded:
    cache: Any
    tokens: int


class SnapshotStore:
    """The snapshot folder. ``cap_bytes`` 0 disables snapshots."""

    def __init__(self, folder: Path | str, cap_bytes: int = 512 << 20) -> None:
        self.folder = Path(folder)
        self.cap_bytes = int(cap_bytes)

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    def save(self, fwd: Any, cache: Any, ids: list[int], weights: str, dtype: str,
             keep: frozenset[str] = frozenset()) -> str:
        """Write the snapshot of ``cache`` (which holds exactly ``ids``); returns its key ("" when
        snapshots are off or the cache is larger than the cap). Then enforces the cap."""
        import torch
        from safetensors.torch import save

        if self.cap_bytes <= 0 or not ids:
            return ""
        k, v = export_kv(fwd, cache)
        if int(k.shape[3]) != len(ids):
            raise ValueError(f"cache holds {k.shape[3]} positions, {len(ids)} ids given")
        if 2 * k.numel() * k.element_size() > self.cap_bytes:
            return ""
        t_ids = torch.tensor(ids, dtype=torch.int64)
        key = snapshot_key(weights, dtype, ids)
        meta = {"format": FORMAT, "weights_hash": weights, "dtype": dtype, "tokens": str(len(ids)),
                "checksum": _digest(_raw(k), _raw(v), _raw(t_ids))}
        if self.path(key).is_dir():  # not ours: make room for the file
            self.remove(key)
        write_bytes(self.path(key), save({"k": k, "v": v, "ids": t_ids}, metadata=meta))
        self.enforce_cap(keep | {key})
        return key

    def load(self, fwd: Any, ids: list[int], weights: str, dtype: str) -> tuple[Optional[Loaded], str]:
        """The cache for ``ids`` if a valid snapshot of exactly them exists, else (None, why).
        An invalid file is deleted."""
        key = snapshot_key(weights, dtype, ids)
        p = self.path(key)
        if not p.exists():
            return None, "no snapshot"
        if not p.is_file() or p.is_symlink():  # a folder or a link in its place is not ours
            self.remove(key)
            return None, "snapshot rejected (not a regular file); recomputed"
        try:
            data = p.read_bytes()
        except OSError as e:  # the disk's fault (permissions, I/O): keep the file, recompute
            return None, f"snapshot unreadable ({e.strerror or e}); recomputed"
        try:
            cache = self._validated(fwd, data, ids, weights, dtype)
        except _Invalid as e:
            self.remove(key)
            return None, f"snapshot rejected ({e}); recomputed"
        except Exception as e:  # unreadable bytes: corrupt
            self.remove(key)
            return None, f"snapshot rejected (corrupt: {type(e).__name__}); recomputed"
        try:
            os.utime(p)  # least recently used goes first
        except OSError:
            pass
        return Loaded(cache, len(ids)), "restored from snapshot"

    def _validated(self, fwd: Any, data: bytes, ids: list[int], weights: str, dtype: str) -> Any:
        import torch
        from safetensors.torch import load

        if len(data) < 8:
            raise _Invalid("truncated")
        (n_header,) = struct.unpack("<Q", data[:8])
        if n_header > len(data) - 8:
            raise _Invalid("truncated header")
        meta = bounded_loads(data[8:8 + n_header], "snapshot header").get("__metadata__") or {}
        if meta.get("format") != FORMAT:
            raise _Invalid("unknown format")
        if meta.get("weights_hash") != weights:
            raise _Invalid("other weights")
        if meta.get("dtype") != dtype or meta.get("tokens") != str(len(ids)):
            raise _Invalid("other dtype or length")
        t = load(data)
        k, v, t_ids = t.get("k"), t.get("v"), t.get("ids")
        if k is None or v is None or t_ids is None:
            raise _Invalid("missing tensors")
        if t_ids.tolist() != list(ids):
            raise _Invalid("other token ids")
        layers, heads, d = kv_layout(fwd)
        if tuple(k.shape) != (layers, 1, heads, len(ids), d) or v.shape != k.shape:
            raise _Invalid(f"shape {tuple(k.shape)} does not fit this model")
        if str(k.dtype).replace("torch.", "") != str(_cache_dtype(fwd)).replace("torch.", ""):
            raise _Invalid("other tensor dtype")
        if _digest(_raw(k), _raw(v), _raw(t_ids)) != meta.get("checksum"):
            raise _Invalid("checksum mismatch")
        if not bool(torch.isfinite(k).all()) or not bool(torch.isfinite(v).all()):
            raise _Invalid("non-finite values")
        return import_kv(fwd, k, v)

    def remove(self, key: str) -> None:
        if key:
            p = self.path(key)
            try:
                if p.is_dir() and not p.is_symlink():
                    import shutil

                    shutil.rmtree(p)
                else:
                    p.unlink()
            except FileNotFoundError:
                pass
            except OSError:  # the disk's fault: left; the snapshot is recomputed either way
                pass

    def files(self) -> list[Path]:
        """The snapshot files (regular files only: anything else under the name is skipped)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob(f"*{SUFFIX}") if p.is_file() and not p.is_symlink())

    def enforce_cap(self, keep: frozenset[str] | set[str] = frozenset()) -> list[str]:
        """Delete least recently used snapshots until the folder is under the cap; ``keep`` (the
        snapshot just written) goes last. Returns the removed keys."""
        entries = []
        for p in self.files():
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            entries.append((p.stem in keep, st.st_mtime, p, st.st_size))
        total = sum(e[3] for e in entries)
        removed = []
        for _, _, p, size in sorted(entries, key=lambda e: (e[0], e[1])):
            if total <= self.cap_bytes:
                break
            try:
                p.unlink()
            except OSError:  # gone already, or the disk refuses: count it as gone
                pass
            total -= size
            removed.append(p.stem)
        return removed


def file_problem(path: Path) -> Optional[str]:
    """None when a snapshot file is whole: its header parses and its checksum matches the
    stored K, V and ids (a full check without the model, for ``--verify-cache``). A checksum
    in the file detects damage, not a deliberate edit that recomputes it."""
    from safetensors.torch import load

    try:
        data = path.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        meta = bounded_loads(data[8:8 + n], "snapshot header").get("__metadata__") or {}
        if meta.get("format") != FORMAT:
            return "unknown format"
        t = load(data)
        k, v, ids = t.get("k"), t.get("v"), t.get("ids")
        if k is None or v is None or ids is None:
            return "missing tensors"
        if _digest(_raw(k), _raw(v), _raw(ids)) != meta.get("checksum"):
            return "checksum mismatch"
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 — any unreadable byte: damaged
        return f"corrupt ({type(e).__name__})"
    return None


def _cache_dtype(fwd: Any) -> Any:
    if hasattr(fwd, "dtype"):
        return fwd.dtype
    return next(fwd.model.parameters()).dtype


class _Invalid(Exception):
    """A snapshot that exists but must not be used."""
