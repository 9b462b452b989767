"""UI-free engine. One package per job — lm/ (model core), advtok/, treesearch/, bench/ — over the
shared plumbing kept here (errors, progress/cancel, atomic writes, paths). It may import no app, textual or rich."""
