"""A node of the search tree and the KV handle it may carry: plain data with no rules, so the
tree (tree.py), the policies (policy.py) and the rollout driver (rollout.py) can all import it
and the imports go one way: node → policy → tree → rollout → search."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch


@dataclass
class KVHandle:
    """Where a node's prefix lives: the first ``keep`` positions of a trajectory cache, with a
    0/1 ``mask`` over them when that cache holds pad slots (None: every slot is real)."""

    cache: Any
    keep: int
    mask: Optional[torch.Tensor] = None


class Node:
    """A state = prompt + the tokens from the root. ``m`` is how often the parent's draws from q
    produced this node; ``M`` the draws made at this node; ``value`` None while pending."""

    __slots__ = ("token", "parent", "depth", "children", "m", "M", "value", "visits", "done", "eos",
                 "reward", "logp", "kv", "lse", "n_roll", "roll_samples", "extra")

    def __init__(self, token: int, parent: Optional["Node"], depth: int) -> None:
        self.token = token
        self.parent = parent
        self.depth = depth
        self.children: dict[int, Node] = {}
        self.m = 0
        self.M = 0
        self.value: Optional[float] = None
        self.visits = 0
        self.done = False
        self.eos = False
        self.reward: Optional[float] = None
        self.logp: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (ids int32, log q) top-p
        self.kv: Optional[KVHandle] = None
        self.lse = -math.inf  # depth-capped leaves: log Σ exp(λ r) over their rollouts
        self.n_roll = 0
        self.roll_samples: list[tuple[float, tuple[int, ...]]] = []
        self.extra = 0  # widening budget added when search mode kept landing on known terminals

    def tokens(self) -> list[int]:
        """Tokens from the root to here (EOS included if this is an EOS node)."""
        out = []
        n: Optional[Node] = self
        while n is not None and n.parent is not None:
            out.append(n.token)
            n = n.parent
        return out[::-1]

    def __repr__(self) -> str:
        return (f"Node(tok={self.token}, d={self.depth}, m={self.m}, M={self.M}, v={self.value}, "
                f"N={self.visits}, done={self.done})")


def tree_signature(node: Node) -> tuple:
    """A hashable picture of the tree (tokens, counts, visits, values) to compare two runs."""
    return (node.token, node.m, node.M, node.visits,
            None if node.value is None else round(node.value, 12),
            tuple(tree_signature(node.children[k]) for k in sorted(node.children)))


def tokens_between(anc: Node, node: Node) -> list[int]:
    """Tokens on the path from ``anc`` (exclusive) down to ``node`` (inclusive)."""
    out = []
    n: Optional[Node] = node
    while n is not None and n is not anc:
        out.append(n.token)
        n = n.parent
    return out[::-1]
