"""UI-free engine. One package per job — lm/ (model core), advtok/, treesearch/, bench/ — over the
shared plumbing kept here (errors, progress/cancel, atomic writes, paths, memory budget, bounded
JSON reading, cache integrity records, lock files, stale-temp cleanup, inert text for terminals).
It may import no app, textual or rich; the plumbing imports only the standard library, psutil
and itself."""
