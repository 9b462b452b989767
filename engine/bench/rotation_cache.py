"""The LaRoSA rotations on disk: one safetensors file per (weights, calibration text, settings).

Calibrating on 20,000 tokens takes minutes on a CPU, so the result is kept in the cache folder
(``sparsity/larosa-KEY.safetensors``): written atomically with an integrity record
(engine/integrity.py), read back only after its record, its header, its key, its shapes and the
orthogonality of every matrix check out; anything else is moved aside and recomputed. Plain
tensors and string metadata only (no pickle). Callers hold the entry's lock (engine/locks.py)
around load-or-compute, so two processes never calibrate the same entry twice."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from engine.paths import cache_dir

FORMAT = "tokenforge-larosa-rotations"
VERSION = "1"


def rotations_path(key: str) -> Path:
    return cache_dir("sparsity") / f"larosa-{key}.safetensors"


def save_rotations(path: Path, key: str, rotations: dict[str, list[torch.Tensor]],
                   tokens: int) -> None:
    """Write the rotations (site → one (H, H) matrix per layer) and the token count."""
    from safetensors.torch import save

    from engine.integrity import write_file

    tensors = {f"{site}.{i}": q.detach().to(torch.float32).contiguous().cpu()
               for site, qs in rotations.items() for i, q in enumerate(qs)}
    meta = {"format": FORMAT, "version": VERSION, "key": key, "tokens": str(int(tokens)),
            "sites": ",".join(rotations), "layers": str(len(next(iter(rotations.values()))))}
    write_file(path, save(tensors, metadata=meta))


def _problem(path: Path, key: str, layers: int, hidden: int, sites: Sequence[str],
             data: dict[str, torch.Tensor], meta: dict) -> Optional[str]:
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        return "not a tokenforge rotation file of this version"
    if meta.get("key") != key:
        return "belongs to other weights, text or settings (key mismatch)"
    want = {f"{s}.{i}" for s in sites for i in range(layers)}
    if set(data) != want:
        return "wrong set of matrices"
    eye = torch.eye(hidden)
    for name, q in data.items():
        if tuple(q.shape) != (hidden, hidden) or q.dtype != torch.float32:
            return f"{name} has shape {tuple(q.shape)} / {q.dtype}"
        if not torch.isfinite(q).all() or (q.T @ q - eye).abs().max() > 1e-3:
            return f"{name} is not orthogonal"
    try:
        if int(meta.get("tokens", "")) < 2:
            return "bad token count"
    except ValueError:
        return "bad token count"
    return None


def load_rotations(path: Path, key: str, layers: int, hidden: int, sites: Sequence[str]
                   ) -> Optional[tuple[dict[str, list[torch.Tensor]], int]]:
    """The cached rotations and their token count, or None (missing, or bad: moved aside)."""
    from safetensors import safe_open

    from engine.integrity import check_file, quarantine, safetensors_problem

    if not path.exists() and not path.is_symlink():
        return None
    problem = check_file(path, full=True) or safetensors_problem(path)  # ~0.3 s for 80 MB
    data: dict[str, torch.Tensor] = {}
    meta: dict = {}
    if problem is None:
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
                data = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as e:  # noqa: BLE001 — any unreadable file is rebuilt, never trusted
            problem = f"unreadable ({type(e).__name__})"
    if problem is None:
        problem = _problem(path, key, layers, hidden, sites, data, meta)
    if problem is not None:
        quarantine(path)
        return None
    rot = {s: [data[f"{s}.{i}"] for i in range(layers)] for s in sites}
    return rot, int(meta["tokens"])
