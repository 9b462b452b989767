"""UI-free engine. One package per job — lm/ (model core), advtok/, treesearch/, bench/ — over the
shared plumbing kept here (errors, progress/cancel, atomic writes, paths). Imports no app, textual or rich."""
