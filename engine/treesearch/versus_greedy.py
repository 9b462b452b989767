"""A tree search next to the plain greedy answer: the one orchestration the search screen and the
``tokenforge search`` command share.

The search runs first; when it completed, the greedy answer (temperature 0, the same horizon) is
decoded from the same prompt and scored by the same reward object, so the two rewards compare like
for like. A reward that fails on the greedy answer is reported on the greedy side
(``greedy_error``) and never loses the search result. A cancelled or failed search skips the
greedy pass. Torch-free at import (the TUI imports ``TreeRun``); the engine parts load on call.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from engine.progress import Cancelled, CancelToken, ProgressFn

if TYPE_CHECKING:
    from engine.lm.model import LoadedModel
    from engine.treesearch.rewards import Reward
    from engine.treesearch.search import TreeConfig, TreeResult


@dataclass
class TreeRun:
    """A ``TreeResult`` beside the greedy answer and both rewards. ``greedy_*`` stay None/empty
    when the search did not complete (cancelled, reward error) or the greedy pass was stopped."""

    result: "TreeResult"
    prompt_ids: list[int]
    greedy_text: Optional[str] = None
    greedy_ids: list[int] = field(default_factory=list)
    greedy_reward: Optional[float] = None
    greedy_stop: str = ""
    greedy_error: str = ""
    reward_spec: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"tree": self.result.to_dict(), "prompt_ids": list(self.prompt_ids),
                "greedy": {"text": self.greedy_text, "token_ids": list(self.greedy_ids),
                           "reward": self.greedy_reward, "stop_reason": self.greedy_stop,
                           "error": self.greedy_error},
                "reward_spec": self.reward_spec}


def search_then_greedy(lm: "LoadedModel", prompt_ids: list[int], reward: "Reward",
                       cfg: "TreeConfig", *, progress: Optional[ProgressFn] = None,
                       cancel: Optional[CancelToken] = None) -> TreeRun:
    """Run the tree search over ``prompt_ids`` (checked against the memory bound for its rollouts
    first), then the greedy answer when the search completed. Cancelling during the greedy pass
    keeps the search result and marks the greedy answer stopped (unscored)."""
    from engine.budget import tree_rollout_bound
    from engine.lm.config import SamplingConfig
    from engine.lm.generate import generate
    from engine.treesearch.rewards import Completion, RewardError
    from engine.treesearch.search import run_tree_search

    tree_rollout_bound(lm, len(prompt_ids), cfg.horizon).check(cfg.rollouts)
    res = run_tree_search(lm, prompt_ids, reward, cfg, progress=progress, cancel=cancel)
    run = TreeRun(result=res, prompt_ids=list(prompt_ids), reward_spec=reward.spec)
    if res.stop_reason != "completed" or (cancel is not None and cancel.cancelled):
        return run
    try:
        g, _ = generate(lm, prompt_ids, SamplingConfig(max_new_tokens=cfg.horizon,
                                                       temperature=0.0),
                        progress=progress, cancel=cancel)
    except Cancelled:  # stopped in the greedy prompt's prefill: the search result stays
        run.greedy_stop = "cancelled"
        return run
    run.greedy_text, run.greedy_ids, run.greedy_stop = g.text, list(g.token_ids), g.stop_reason
    if g.stop_reason != "cancelled":
        try:
            run.greedy_reward = reward.score(Completion(g.text, tuple(g.token_ids),
                                                        tuple(prompt_ids)))
        except RewardError as e:  # reward.score wraps every failure (a plugin's too) as this
            run.greedy_error = str(e)
    return run
