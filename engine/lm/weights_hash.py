"""One content hash of a model's weights, shared by AdvTok records and session snapshots: equal
hashes mean the same weights whatever file they came from, so a replay or a restored KV cache can
tell when the model under it changed."""
from __future__ import annotations

import hashlib
from typing import Any


def weights_hash(model: Any) -> str:
    """BLAKE2b of every parameter and buffer (names, dtypes, shapes, bytes). Cached on the model
    object, so records and snapshots pay the cost (≈ 1–3 s for the bundled model) once."""
    cached = getattr(model, "_tokenforge_weights_hash", None)
    if cached:
        return cached
    import torch

    h = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        flat = t.reshape(-1).contiguous().cpu()
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    digest = h.hexdigest()
    try:
        model._tokenforge_weights_hash = digest
    except AttributeError:
        pass
    return digest
