"""The search tree: nodes with their draw counts and KV handles, widening, selection down the
tree, the soft-Bellman backup, and the answers read off it (best terminal, Boltzmann descent).

The nodes themselves are ``node.py``; the rules that pick among children and compute soft values
live in ``policy.py``; the forward passes that produce rollouts live in ``rollout.py``. This
module runs no model.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import torch

from engine.treesearch.config import TreeConfig
from engine.treesearch.node import KVHandle, Node
from engine.treesearch.policy import boltzmann, select_child, soft_value


class Tree:
    """The search tree and its rules: widening budget, selection, soft-Bellman backup, answers."""

    def __init__(self, cfg: TreeConfig, generator: Optional[torch.Generator] = None,
                 eos_ids: Sequence[int] = ()) -> None:
        self.cfg = cfg
        # a token drawn by widening that is an EOS makes a terminal child, scored without a rollout
        self.eos_ids = frozenset(int(e) for e in eos_ids)
        self.lam = float(cfg.lam)
        self.gen = generator
        self.root = Node(-1, None, 0)
        self.root.value = 0.0
        self.size = 1
        self.depth = 0

    # ---- building
    def add_child(self, node: Node, token: int, *, eos: bool = False) -> Node:
        c = Node(token, node, node.depth + 1)
        c.eos = eos
        c.done = eos or c.depth >= self.cfg.horizon
        node.children[token] = c
        self.size += 1
        self.depth = max(self.depth, c.depth)
        return c

    def budget(self, node: Node) -> int:
        """How many draws from q node may make before selection takes over."""
        b = self.cfg.widening + node.extra
        if self.cfg.widening_alpha > 0:
            b = max(b, math.ceil((node.visits + 1) ** self.cfg.widening_alpha))
        return b

    def draw(self, node: Node) -> int:
        """One token from q(·|node) (its stored top-p-truncated distribution)."""
        ids, lp = node.logp  # type: ignore[misc]
        j = int(torch.multinomial(lp.exp(), 1, generator=self.gen))
        return int(ids[j])

    def insert_rollout(self, path: list[Node], tokens: Sequence[int],
                       dists: Sequence[tuple[torch.Tensor, torch.Tensor]],
                       kv: Optional[KVHandle], keep0: int) -> list[Node]:
        """Append a rollout leaving ``path[-1]`` as a chain of states (each fed state keeps its q
        and, with KV reuse, a handle into the rollout's trajectory ``kv``, whose position
        ``keep0 - 1`` holds the start node's token); returns the full path to its end."""
        cfg = self.cfg
        path = list(path)
        node = path[-1]
        if cfg.reuse_kv and node.kv is None and kv is not None:
            node.kv = KVHandle(kv.cache, keep0, kv.mask)
        cap = cfg.depth_cap
        for k, tok in enumerate(tokens, 1):
            if node.depth >= cap and not node.done:
                break  # deeper states are not stored; ``node`` keeps this rollout's statistics
            is_eos = tok in self.eos_ids
            child = node.children.get(tok)
            if child is None:
                child = self.add_child(node, tok, eos=is_eos)
            child.m += 1
            node.M += 1
            fed = k < len(tokens)
            if fed:
                if child.logp is None:
                    child.logp = dists[k - 1]
                if cfg.reuse_kv and child.kv is None and kv is not None:
                    child.kv = KVHandle(kv.cache, keep0 + k, kv.mask)
            path.append(child)
            node = child
        return path

    # ---- values
    def set_leaf_value(self, end: Node, r: float, completion: Sequence[int]) -> None:
        """A rollout ending at ``end`` scored ``r``: a terminal takes its exact reward; a
        depth-capped leaf the Monte-Carlo soft value (1/λ) log mean exp(λ r) of its rollouts."""
        if end.done:
            if end.value is None:
                end.value = end.reward = r
            return
        end.lse = float(torch.logaddexp(torch.tensor(end.lse, dtype=torch.float64),
                                        torch.tensor(self.lam * r, dtype=torch.float64)))
        end.n_roll += 1
        end.value = (end.lse - math.log(end.n_roll)) / self.lam
        end.roll_samples.append((r, tuple(completion)))

    def backup(self, path: Sequence[Node]) -> None:
        """Recompute values leaf → root along ``path`` (the end node's value is already set)."""
        path[-1].visits += 1
        for u in reversed(path[:-1]):
            u.value = soft_value(u, self.lam)
            u.visits += 1

    # ---- selection
    def select(self) -> list[Node]:
        """One selection from the root; draws from q while the widening budget allows. Ends at a
        new (pending) child, a pending node, a terminal, or a depth-capped leaf."""
        s = self.root
        path = [s]
        cap = self.cfg.depth_cap
        while True:
            if s.done or (s is not self.root and s.value is None) or s.depth >= cap:
                return path
            if s.M < self.budget(s):
                a = self.draw(s)
                s.M += 1
                child = s.children.get(a)
                if child is None:
                    child = self.add_child(s, a, eos=a in self.eos_ids)
                    child.m = 1
                    path.append(child)
                    return path
                child.m += 1
                s = child
            else:
                s = select_child(s, self.cfg, self.gen)
            path.append(s)

    def drop_pending(self) -> None:
        """Remove children drawn in an unfinished round (so the tree stays consistent)."""
        stack = [self.root]
        while stack:
            n = stack.pop()
            for tok, c in list(n.children.items()):
                if c.value is None:
                    n.M -= c.m
                    del n.children[tok]
                    self.size -= 1
                else:
                    stack.append(c)

    # ---- answers
    def descend(self) -> Optional[tuple[tuple[int, ...], float]]:
        """Sampling-mode answer: Boltzmann descent from the root without widening, to a terminal
        (its exact reward) or a depth-capped leaf (one of its rollouts, weighted exp(λ r))."""
        s = self.root
        while not s.done:
            kids = [c for c in s.children.values() if c.value is not None and c.m > 0]
            if kids:
                s = kids[boltzmann([(c.value, c.m) for c in kids], self.lam, self.gen)]  # type: ignore[misc]
                continue
            if s.roll_samples:
                j = boltzmann([(r, 1.0) for r, _ in s.roll_samples], self.lam, self.gen)
                r, toks = s.roll_samples[j]
                return toks, r
            return None
        toks = s.tokens()
        if s.eos:
            toks = toks[:-1]
        return tuple(toks), float(s.reward)  # type: ignore[arg-type]

    def stats(self) -> dict[str, Any]:
        internal = 0
        kids = 0
        logp_bytes = 0
        stack = [self.root]
        while stack:
            n = stack.pop()
            if n.logp is not None:
                logp_bytes += n.logp[0].numel() * 4 + n.logp[1].numel() * 4
            if n.children:
                internal += 1
                kids += len(n.children)
                stack.extend(n.children.values())
        return {"nodes": self.size, "max_depth": self.depth, "logp_bytes": logp_bytes,
                "mean_branching": round(kids / internal, 3) if internal else 0.0}
