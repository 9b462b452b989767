"""Walking a real search tree (tiny model): node facts agree with a brute-force walk of the tree,
moves stay consistent, and a search started from a node scores path + continuation."""
from __future__ import annotations

import pytest

from engine.errors import InputError
from engine.treesearch.explore import TreeNav, best_below, search_from
from engine.treesearch.rewards import Completion, parse_reward
from engine.treesearch.search import TreeConfig, run_tree_search


@pytest.fixture(scope="module")
def run(tiny_lm):
    tok = tiny_lm.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": "Write about the moon."}],
                                  add_generation_prompt=True, return_dict=False)
    reward = parse_reward("length:4-8c")
    cfg = TreeConfig(rollouts=12, horizon=6, batch=4, widening=3, seed=0, temperature=1.0)
    res = run_tree_search(tiny_lm, ids, reward, cfg)
    return ids, reward, cfg, res


def _all(node):
    yield node
    for c in node.children.values():
        yield from _all(c)


def _decode(tok):
    return lambda ids: tok.decode(list(ids), skip_special_tokens=True)


def test_node_facts_and_moves(tiny_lm, run):
    ids, reward, cfg, res = run
    tree = res.tree
    nav = TreeNav(tree, _decode(tiny_lm.tokenizer), tiny_lm.eos_ids, ids)
    assert best_below(tree.root) == pytest.approx(res.best.reward)
    for n in _all(tree.root):  # brute force: every rollout reward recorded in the subtree
        rewards = [x.reward for x in _all(n) if x.reward is not None] + \
                  [r for x in _all(n) for r, _ in x.roll_samples]
        assert best_below(n) == (max(rewards) if rewards else None)
    info = nav.info()
    assert info.depth == 0 and info.visits == tree.root.visits and info.children == len(tree.root.children)
    first = nav.down(0)
    assert first.visits == max(c.visits for c in tree.root.children.values())
    assert nav.info().soft_value == first.value
    assert nav.path_ids() == ([] if first.eos else [first.token])
    if len(tree.root.children) > 1:
        second = nav.sibling(1)
        assert second is not first and second.parent is tree.root
        assert nav.sibling(-1) is first
    deep = first
    while deep.children:
        deep = nav.down(0)
    assert nav.path_text() == tiny_lm.tokenizer.decode(nav.path_ids(), skip_special_tokens=True)
    assert len(nav.path_ids()) in (deep.depth, deep.depth - 1)
    with pytest.raises(InputError, match="no children"):
        nav.down()  # a leaf
    while nav.node is not tree.root:
        nav.up()
    assert nav.up() is tree.root and nav.sibling(1) is tree.root


def test_search_from_a_node_scores_the_whole_answer(tiny_lm, run):
    ids, reward, cfg, res = run
    tree = res.tree
    node = max(tree.root.children.values(), key=lambda c: c.visits)
    nav = TreeNav(tree, _decode(tiny_lm.tokenizer), tiny_lm.eos_ids, ids)
    nav.node = node
    path = nav.path_ids()
    sub = search_from(tiny_lm, ids, path, reward, cfg)
    assert sub.stop_reason == "completed" and sub.best is not None
    whole = path + sub.best.token_ids
    text = tiny_lm.tokenizer.decode(whole, skip_special_tokens=True)
    assert sub.best.reward == reward.score(Completion(text, tuple(whole), tuple(ids)))
    assert sub.tree.depth <= cfg.horizon - len(path)
    with pytest.raises(InputError, match="no horizon left"):
        search_from(tiny_lm, ids, [path[0]] * cfg.horizon, reward, cfg)
