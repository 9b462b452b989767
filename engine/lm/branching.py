"""Navigating the variants of a conversation's answers: the tree is ``ChatSession.nodes`` (every
exchange ever answered; ``engine/lm/chat.py`` makes them, the session store saves them), and these
functions say which answers are alternatives of each other at a turn and at a token position.

Variants at a turn: the exchanges that follow the same previous exchange (``prev``) — the first
answer, its regenerations, edited messages and answers forced at the first token.

Variants at answer position p > 0: the answers that share the answer up to p and differ from
there are one group, shown as "< i/n >": the answer that owned position p (its own decoding
produced it), plus every answer forced from it at p (their ``source`` is that owner and their
``fork_at`` is p). A forced answer copies its source's tokens before p, so the groups nest.

Torch-free: the TUI and the headless ``sessions`` command use them on saved trees too.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence


def owner(nodes: Sequence[Any], node: int, p: int) -> Any:
    """The exchange whose own decoding produced answer position ``p`` of ``node``."""
    b = nodes[node]
    while b.source is not None and b.fork_at > p:
        b = nodes[b.source]
    return b


def group_parent(nodes: Sequence[Any], node: int, p: int) -> Optional[int]:
    """The ``source`` of every variant at position ``p`` of ``node`` (None at p = 0: the turn's
    variants have none)."""
    if p == 0:
        return None
    q = owner(nodes, node, p)
    if q.fork_at == p and q.source is not None:
        return q.source
    return q.id


def variants(nodes: Sequence[Any], node: int, p: int) -> list[int]:
    """The exchanges that share ``node``'s answer before ``p`` and differ at ``p``, oldest
    first (at p = 0: every variant at its turn)."""
    b = nodes[node]
    parent = group_parent(nodes, node, p)
    if parent is None:
        return [x.id for x in nodes if x.prev == b.prev and x.source is None]
    return [parent] + [x.id for x in nodes if x.source == parent and x.fork_at == p]


def turn_variants(nodes: Sequence[Any], node: int) -> list[int]:
    """Every exchange at ``node``'s turn (same previous exchange), forced ones included."""
    prev = nodes[node].prev
    return [x.id for x in nodes if x.prev == prev]


def fork_points(nodes: Sequence[Any], node: int) -> list[int]:
    """Answer positions of ``node`` where other variants exist."""
    b = nodes[node]
    cand = {x.fork_at for x in nodes if x.source is not None}
    cand.add(0)
    return sorted(p for p in cand if p < max(1, len(b.answer_ids))
                  and len(variants(nodes, node, p)) > 1)


def _here(nodes: Sequence[Any], node: int, p: int, v: list[int]) -> int:
    here = owner(nodes, node, p).id
    return v.index(here) if here in v else (v.index(node) if node in v else 0)


def step(nodes: Sequence[Any], node: int, p: int, delta: int) -> int:
    """The previous (-1) / next (+1) variant at ``p``, wrapping around."""
    v = variants(nodes, node, p)
    return v[(_here(nodes, node, p, v) + delta) % len(v)]


def label(nodes: Sequence[Any], node: int, p: int) -> str:
    """'< i/n >' for the variants at ``p``."""
    v = variants(nodes, node, p)
    return f"< {_here(nodes, node, p, v) + 1}/{len(v)} >"
