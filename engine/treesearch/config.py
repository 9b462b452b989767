"""The tree search's settings, torch-free, each bound declared once on its field (engine.bounds):
``TreeConfig.validate()``, the command line (app/argcheck.py) and the TUI's search form read the
same declaration. The memory a search may take (``--rollouts`` against the machine) is computed
by engine.budget.tree_rollout_bound; the static range is stated here.

A leaf module: the tree, the policies, the rollout driver and the search loop all import it and
it imports none of them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from engine.bounds import BIG, SEED_MAX, bounded, check
from engine.errors import ContextOverflow, InputError
from engine.lm.config import SamplingConfig

MODES = ("search", "sample")


@dataclass
class TreeConfig:
    """Tree-search settings. ``horizon`` counts NEW tokens only; ``exploration`` (UCT bonus in
    search mode) is our addition to DTS* and 0 by default; ``widening_alpha`` > 0 lets the
    widening budget grow as N(s)^α (needed for consistency as rollouts → ∞); ``batch`` is how many
    rollouts one round decodes together; ``reuse_kv=False`` re-encodes prompt + path for every
    rollout (the naive baseline of the benchmark, batch 1 only)."""

    # each rollout stores its KV and a nucleus per new node: the machine's memory bounds it
    # (engine.budget.tree_rollout_bound, checked before a search starts) far below this ceiling
    rollouts: int = bounded(10, lo=1, hi=BIG)
    widening: int = bounded(3, lo=1, hi=BIG, label="widening budget")
    widening_alpha: float = bounded(0.0, lo=0.0, hi=1.0, label="widening alpha")
    # λ scales rewards inside exp(λ r): below 1e-9 every reward looks the same, above 1e4 the
    # float64 soft values overflow for rewards of order 0.1
    lam: float = bounded(1.0, lo=1e-9, hi=1e4, label="λ")
    # q must be a sampling policy: temperature 0 (greedy) would give every draw the same token
    temperature: float = bounded(1.0, lo=0.0, hi=100.0, lo_open=True, label="base temperature")
    top_p: float = bounded(0.95, lo=0.0, hi=1.0, lo_open=True, label="top-p")
    # new tokens per rollout; the model's context (prompt + horizon) is checked in validate()
    horizon: int = bounded(50, lo=1, hi=BIG)
    max_depth: Optional[int] = bounded(None, lo=1, hi=BIG, optional=True, label="max depth")
    exploration: float = bounded(0.0, lo=0.0, hi=1e6, label="exploration constant")
    mode: str = bounded("search", choices=MODES)
    # Boltzmann descents through the finished tree: no model call, each keeps ≤ horizon ids
    n_samples: int = bounded(1, lo=1, hi=100_000, label="samples")
    # rollouts decoded together in one batch (each one row of KV + logits)
    batch: int = bounded(5, lo=1, hi=256)
    seed: Optional[int] = bounded(0, lo=0, hi=SEED_MAX, optional=True, kind="int")
    reuse_kv: bool = True
    # q's history stage (engine.lm.sampling's pipeline); 1 = off
    repetition_penalty: float = bounded(1.0, lo=0.0, hi=100.0, lo_open=True,
                                        label="repetition penalty")

    def validate(self, context_length: Optional[int] = None,
                 prompt_len: Optional[int] = None) -> "TreeConfig":
        check(self)
        if not self.reuse_kv and self.batch != 1:
            raise InputError("reuse_kv=False (naive re-encoding) runs one rollout at a time: "
                             "batch must be 1")
        if context_length is not None and prompt_len is not None:
            if prompt_len + self.horizon > context_length:
                raise ContextOverflow(
                    f"prompt ({prompt_len} tokens) + horizon ({self.horizon}) is beyond the "
                    f"context length {context_length}",
                    hint=f"use --horizon ≤ {max(context_length - prompt_len, 0)}")
        return self

    def sampling(self) -> SamplingConfig:
        """q as the decode pipeline's settings (the rollouts draw through it)."""
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, top_k=0,
                              repetition_penalty=self.repetition_penalty, seed=self.seed,
                              max_new_tokens=self.horizon)

    @property
    def depth_cap(self) -> int:
        return min(self.max_depth or self.horizon, self.horizon)
