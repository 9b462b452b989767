"""Adversarial tokenization: the exact-bytes vocabulary, the tokenization diagram (MDD), the cached
candidate scorer, the greedy search and the token view. May import engine.lm and the plumbing."""
