"""Adversarial tokenization: the exact-bytes vocabulary, the tokenization diagram (MDD), the cached
candidate scorer, the greedy search, the token view and the editable lattice. May import engine.lm
and the plumbing."""
