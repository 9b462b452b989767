"""The tree search's rules by hand: soft values are log-MEAN-exp over draw counts (pending children
left out), the backup carries them up, selection follows m·exp(λ v̂) in sample mode and argmax (+UCT)
in search mode, and q's top-p truncation equals the sampler's."""
from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from engine.treesearch.policy import policy, select_child, soft_value
from engine.treesearch.search import TreeConfig
from engine.treesearch.tree import Tree


# ---------------------------------------------------------------- soft values and selection

def _hand_tree(lam: float, values: list[float], counts: list[int], mode: str = "sample",
               seed: int = 0) -> Tree:
    g = torch.Generator().manual_seed(seed)
    t = Tree(TreeConfig(lam=lam, mode=mode, horizon=10), g)
    for i, (v, m) in enumerate(zip(values, counts)):
        c = t.add_child(t.root, 100 + i)
        c.value, c.m, c.visits = v, m, m
    t.root.M = sum(counts)
    t.root.visits = sum(counts)
    return t


@pytest.mark.parametrize("lam", [0.5, 1.0, 4.0])
def test_soft_value_is_log_mean_exp(lam):
    values, counts = [0.2, 0.9, 0.5, 0.0], [3, 1, 2, 4]
    t = _hand_tree(lam, values, counts)
    want = math.log(sum(m * math.exp(lam * v) for v, m in zip(values, counts)) / sum(counts)) / lam
    assert soft_value(t.root, t.lam) == pytest.approx(want, abs=1e-12)
    # backup through a one-child chain carries the value exactly
    leaf = t.root.children[100]
    mid = t.add_child(leaf, 7)
    mid.value, mid.m = 0.3, 1
    t.backup([t.root, leaf, mid])
    assert leaf.value == pytest.approx(0.3, abs=1e-15)


def test_equal_children_give_exactly_v_and_limits():
    t = _hand_tree(1.0, [0.37] * 5, [1, 2, 3, 4, 5])
    assert soft_value(t.root, t.lam) == pytest.approx(0.37, abs=1e-12)  # log-sum-exp would add log 15
    values, counts = [0.1, 0.8, 0.4], [5, 1, 2]
    mean = sum(v * m for v, m in zip(values, counts)) / sum(counts)
    assert soft_value(_hand_tree(1e-7, values, counts).root, 1e-7) == \
        pytest.approx(mean, abs=1e-6)
    big = _hand_tree(2000.0, values, counts)
    assert soft_value(big.root, big.lam) == pytest.approx(0.8, abs=2e-3)


def test_pending_children_are_not_counted():
    t = _hand_tree(1.0, [0.6, 0.6], [1, 1])
    p = t.add_child(t.root, 999)  # drawn this round, no rollout yet
    p.m = 3
    assert soft_value(t.root, t.lam) == pytest.approx(0.6, abs=1e-12)


def test_small_lambda_selection_follows_draw_counts():
    counts, values = [6, 3, 1], [0.1, 0.9, 0.5]
    t = _hand_tree(1e-6, values, counts, seed=1)
    n = 6000
    freq = Counter(select_child(t.root, t.cfg, t.gen).token - 100 for _ in range(n))
    for i, m in enumerate(counts):
        assert abs(freq[i] / n - m / sum(counts)) < 0.025
    # with a large λ the same rule follows m·exp(λ v)
    t = _hand_tree(3.0, values, counts, seed=2)
    w = [m * math.exp(3.0 * v) for v, m in zip(values, counts)]
    freq = Counter(select_child(t.root, t.cfg, t.gen).token - 100 for _ in range(n))
    for i in range(3):
        assert abs(freq[i] / n - w[i] / sum(w)) < 0.025


def test_search_mode_selection_is_greedy_and_bonus_explores():
    t = _hand_tree(1.0, [0.1, 0.9, 0.5], [6, 3, 1], mode="search")
    assert all(select_child(t.root, t.cfg, t.gen).token == 101 for _ in range(20))
    t.cfg.exploration = 5.0
    t.root.children[102].visits = 1
    t.root.children[101].visits = 40
    assert select_child(t.root, t.cfg, t.gen).token == 102


def test_policy_matches_process_top_p():
    from engine.lm.config import SamplingConfig
    from engine.lm.sampling import LogitsPipeline

    logits = torch.randn(3, 5000) * 3
    _, dists = policy(logits, 0.8, 0.9, None, sample=False)
    ref = LogitsPipeline(SamplingConfig(temperature=0.8, top_p=0.9, top_k=0)).process(logits).log_softmax(-1)
    for r, (ids, lp) in enumerate(dists):
        kept = torch.isfinite(ref[r]).nonzero().view(-1)
        assert sorted(ids.tolist()) == sorted(kept.tolist())
        assert torch.allclose(lp, ref[r, ids.long()], atol=1e-5)
