"""The policies of the tree search: q, the base sampling policy every draw and rollout uses, and
the rules that choose among a node's children from their soft values (docs/algorithms.md §3).

Kept apart from the tree's bookkeeping so each rule can be checked by hand: the soft value is a
log-MEAN-exp over draw counts, sampling-mode selection is Boltzmann over m(s,a)·exp(λ v̂), search
mode is argmax v̂ with an optional UCT bonus.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from engine.lm.config import SamplingConfig
from engine.lm.sampling import LogitsPipeline
from engine.treesearch.config import TreeConfig
from engine.treesearch.node import Node


def policy(logits: torch.Tensor, temperature: float, top_p: float,
           generator: Optional[torch.Generator], sample: bool = True,
           ) -> tuple[Optional[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    """q on (R, V) logits with no history (temperature, then top-p): sampled tokens (R,) (None
    unless ``sample``) and each row's truncated (ids, renormalised log q), exactly the
    distribution the tokens were drawn from. The search itself runs q through its driver's
    :class:`LogitsPipeline` (rollout.py), which adds the history-dependent stages."""
    pipe = LogitsPipeline(SamplingConfig(temperature=temperature, top_p=top_p, top_k=0),
                          generator=generator)
    return pipe.truncated(logits, sample)


def soft_value(node: Node, lam: float) -> Optional[float]:
    """(1/λ)[logsumexp_a(λ v̂(s·a) + log m(s,a)) − log Σ m] over children that have a value
    (pending children are left out, never counted at v̂ = 0)."""
    vals = [(c.value, c.m) for c in node.children.values() if c.value is not None and c.m > 0]
    if not vals:
        return node.value
    xs = [lam * v + math.log(m) for v, m in vals]
    top = max(xs)
    lse = top + math.log(sum(math.exp(x - top) for x in xs))
    return (lse - math.log(sum(m for _, m in vals))) / lam


def boltzmann(vm: Sequence[tuple[float, float]], lam: float, gen: Optional[torch.Generator]) -> int:
    """Index drawn ∝ m·exp(λ v) over (v, m) pairs (float64, shifted by the max)."""
    xs = torch.tensor([lam * v + math.log(m) for v, m in vm], dtype=torch.float64)
    return int(torch.multinomial((xs - xs.max()).exp(), 1, generator=gen))


def select_child(node: Node, cfg: TreeConfig, gen: Optional[torch.Generator]) -> Node:
    """Sampling mode: a ~ m(s,a)·exp(λ v̂(s·a)); search mode: argmax v̂ (+ c·UCT bonus)."""
    kids = [c for c in node.children.values() if c.value is not None and c.m > 0]
    if not kids:  # only children drawn in this round so far
        pend = [c for c in node.children.values() if c.m > 0]
        if cfg.mode == "search":
            return max(pend, key=lambda c: c.m)
        w = torch.tensor([float(c.m) for c in pend])
        return pend[int(torch.multinomial(w, 1, generator=gen))]
    if cfg.mode == "sample":
        return kids[boltzmann([(c.value, c.m) for c in kids], float(cfg.lam), gen)]  # type: ignore[misc]
    c_exp = cfg.exploration
    if c_exp > 0:
        logn = math.log(max(node.visits, 1))
        return max(kids, key=lambda c: c.value + c_exp * math.sqrt(logn / max(c.visits, 1)))  # type: ignore[operator]
    return max(kids, key=lambda c: c.value)  # type: ignore[arg-type,return-value]
