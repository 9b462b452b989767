"""The neighbourhood AdvTok's local search moves in: the tokenizations at distance 2 in the
tokenization diagram (optionally the distance-1 merges and sampled distance-4 ones), subsampled to
the candidate budget, and the token-level edit distance a result reports."""
from __future__ import annotations

import random
from typing import Any, Sequence

from engine.advtok.config import AttackConfig


def levenshtein(a: Sequence[int], b: Sequence[int]) -> int:
    """Edit distance between two token-id sequences (insert, delete, substitute)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def _subset(rng: random.Random, items: list[list[int]], k: int) -> list[list[int]]:
    if len(items) <= k:
        return list(items)
    return rng.sample(items, k)


def candidates(mdd: Any, x: list[int], cfg: AttackConfig, rng: random.Random
               ) -> tuple[list[list[int]], int, bool]:
    """The neighbourhood of X to score (X excluded), its size before subsampling, and whether
    it is the full neighbourhood (so that X' == X means a fixed point)."""
    near = mdd.neighbours(x, 2)
    if cfg.include_merges:
        near = mdd.neighbours(x, 1) + near
    before = len(near)
    if cfg.distance4:
        n4_total = mdd.count_at(x, 4)
        before += min(n4_total, 10**12)
        budget = cfg.max_neighbours or 4 * max(len(near), 4)
        n2 = max(1, budget // 4) if near else 0
        kept = _subset(rng, near, n2)
        seen = {tuple(v) for v in kept}
        for v in mdd.sample_at(x, 4, rng, budget - len(kept)):
            if tuple(v) not in seen:
                seen.add(tuple(v))
                kept.append(v)
        full = len(kept) >= len(near) + n4_total
        return kept, before, full
    if cfg.max_neighbours is not None and len(near) > cfg.max_neighbours:
        return _subset(rng, near, cfg.max_neighbours), before, False
    return near, before, True
