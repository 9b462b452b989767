"""The tree search beside the greedy answer (engine/treesearch/versus_greedy.py), the one
orchestration the search screen and `tokenforge search` share: the greedy side is the plain
temperature-0 answer scored by the same reward; a reward failing on it only marks the greedy side;
a stop during the greedy pass keeps the search result; a stopped search skips the greedy pass."""
from __future__ import annotations

from typing import Any

import pytest

from engine.lm.config import SamplingConfig
from engine.lm.generate import generate
from engine.progress import CancelToken
from engine.treesearch.rewards import Completion, Reward
from engine.treesearch.search import TreeConfig
from engine.treesearch.versus_greedy import TreeRun, search_then_greedy

CFG = dict(rollouts=4, horizon=4, batch=2, seed=0)


@pytest.fixture(scope="module")
def lm(tokenizer):
    from engine.lm.tiny import tiny_llama

    return tiny_llama(tokenizer, seed=3)


@pytest.fixture(scope="module")
def prompt(lm):
    return list(lm.tokenizer.encode("Write about the moon.", add_special_tokens=False))


def reward(fn: Any) -> Reward:
    return Reward("plugin", "test", "test", runs_user_code=True, _fn=fn)


def test_greedy_is_the_plain_answer_scored_by_the_same_reward(lm, prompt):
    r = reward(lambda c: min(1.0, len(c.text) / 100))
    run = search_then_greedy(lm, prompt, r, TreeConfig(**CFG))
    assert isinstance(run, TreeRun) and run.result.stop_reason == "completed"
    g, _ = generate(lm, prompt, SamplingConfig(max_new_tokens=4, temperature=0.0))
    assert run.greedy_text == g.text and run.greedy_ids == list(g.token_ids)
    assert run.greedy_reward == r.score(Completion(g.text, tuple(g.token_ids), tuple(prompt)))
    assert run.greedy_error == "" and run.reward_spec == "test"
    d = run.to_dict()
    assert d["greedy"]["text"] == g.text and d["tree"]["rollouts_done"] == 4


def test_a_reward_failing_on_the_greedy_answer_keeps_the_search(lm, prompt):
    greedy_ids = list(generate(lm, prompt, SamplingConfig(max_new_tokens=4,
                                                         temperature=0.0))[0].token_ids)

    def fn(c: Completion) -> float:
        if list(c.token_ids) == greedy_ids:
            raise ValueError("no greedy answers here")
        return 0.5

    run = search_then_greedy(lm, prompt, reward(fn), TreeConfig(**{**CFG, "temperature": 2.0}))
    assert run.result.best is not None and run.greedy_text is not None
    assert run.greedy_reward is None and "no greedy answers here" in run.greedy_error


def test_a_stop_during_the_greedy_pass_keeps_the_search_result(lm, prompt):
    token = CancelToken()

    def progress(p: Any) -> None:
        if p.phase != "tree":  # the search is over: the greedy answer's prefill or decode
            token.cancel("user")

    run = search_then_greedy(lm, prompt, reward(lambda c: 0.5), TreeConfig(**CFG),
                             progress=progress, cancel=token)
    assert run.result.stop_reason == "completed" and run.result.rollouts_done == 4
    assert run.greedy_stop == "cancelled" and run.greedy_reward is None


def test_a_stopped_search_skips_the_greedy_pass(lm, prompt):
    token = CancelToken()
    token.cancel("user")
    run = search_then_greedy(lm, prompt, reward(lambda c: 0.5), TreeConfig(**CFG), cancel=token)
    assert run.result.stop_reason == "cancelled"
    assert run.greedy_text is None and run.greedy_stop == ""
