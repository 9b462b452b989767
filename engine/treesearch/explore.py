"""Walking a finished (or stopped) search tree: each node's token, visits, draws, soft value and
the best terminal reward observed below it, the text of the path so far; and a new search that
starts from any node (the prompt extended by the node's path; rewards still score the whole
answer, path included, so a search from a node is comparable with the one it came from)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from engine.errors import InputError
from engine.progress import CancelToken, ProgressFn
from engine.treesearch.rewards import Completion, Reward
from engine.treesearch.config import TreeConfig
from engine.treesearch.search import TreeResult, run_tree_search
from engine.treesearch.node import Node
from engine.treesearch.tree import Tree

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


@dataclass
class NodeInfo:
    """What the explorer shows for one node (the root has token -1 and depth 0)."""

    token: int
    text: str
    depth: int
    visits: int
    draws: int
    soft_value: Optional[float]
    best_below: Optional[float]
    children: int
    eos: bool
    done: bool


def best_below(node: Node) -> Optional[float]:
    """The best reward of any rollout that passed through ``node``: terminal nodes carry their
    reward, depth-capped leaves the rewards of the rollouts that continued past them."""
    best: Optional[float] = None
    stack = [node]
    while stack:
        n = stack.pop()
        vals = ([n.reward] if n.reward is not None else []) + [r for r, _ in n.roll_samples]
        for v in vals:
            if best is None or v > best:
                best = float(v)
        stack.extend(n.children.values())
    return best


def ordered_children(node: Node) -> list[Node]:
    """Most visited first, then most drawn, then token id (a stable order for the keys)."""
    return sorted(node.children.values(), key=lambda c: (-c.visits, -c.m, c.token))


class TreeNav:
    """A cursor on a search tree: the current node and moves to parent, child and sibling."""

    def __init__(self, tree: Tree, decode: Callable[[Sequence[int]], str], eos_ids: Sequence[int],
                 prompt_ids: Sequence[int]) -> None:
        self.tree = tree
        self.decode = decode
        self.eos = frozenset(int(e) for e in eos_ids)
        self.prompt_ids = list(prompt_ids)
        self.node = tree.root

    def info(self, node: Optional[Node] = None) -> NodeInfo:
        n = self.node if node is None else node
        text = "" if n.parent is None else self.decode([n.token])
        return NodeInfo(n.token, text, n.depth, n.visits, n.m, n.value, best_below(n),
                        len(n.children), n.eos, n.done)

    def path_ids(self, node: Optional[Node] = None) -> list[int]:
        """The answer tokens from the root to the node (an EOS at the end left out)."""
        ids = (self.node if node is None else node).tokens()
        return ids[:-1] if ids and ids[-1] in self.eos else ids

    def path_text(self, node: Optional[Node] = None) -> str:
        return self.decode(self.path_ids(node))

    def children(self) -> list[Node]:
        return ordered_children(self.node)

    def down(self, i: int = 0) -> Node:
        kids = self.children()
        if not kids:
            raise InputError("this node has no children")
        self.node = kids[max(0, min(i, len(kids) - 1))]
        return self.node

    def up(self) -> Node:
        if self.node.parent is not None:
            self.node = self.node.parent
        return self.node

    def sibling(self, delta: int) -> Node:
        p = self.node.parent
        if p is None:
            return self.node
        sibs = ordered_children(p)
        self.node = sibs[(sibs.index(self.node) + int(delta)) % len(sibs)]
        return self.node


class PrefixedReward:
    """A reward seen through a fixed answer prefix: each completion is scored as prefix +
    completion (decoded together, so a character split over the boundary stays whole)."""

    def __init__(self, inner: Reward, prefix_ids: Sequence[int],
                 decode: Callable[[Sequence[int]], str], prompt_ids: Sequence[int]) -> None:
        self.inner = inner
        self.prefix = tuple(int(t) for t in prefix_ids)
        self.decode = decode
        self.prompt = tuple(int(t) for t in prompt_ids)
        self.kind, self.spec, self.description = inner.kind, inner.spec, inner.description
        self.runs_user_code = inner.runs_user_code

    def prepare(self, lm: LoadedModel, prompt_ids: Sequence[int]) -> None:
        self.inner.prepare(lm, self.prompt)

    def whole(self, c: Completion) -> Completion:
        ids = self.prefix + tuple(c.token_ids)
        return Completion(self.decode(ids), ids, self.prompt)

    def score(self, c: Completion) -> float:
        return self.score_many([c])[0]

    def score_many(self, items: Sequence[Completion]) -> list[float]:
        return self.inner.score_many([self.whole(c) for c in items])

    def to_dict(self) -> dict[str, Any]:
        return {**self.inner.to_dict(), "answer_prefix_tokens": len(self.prefix)}


def search_from(lm: LoadedModel, prompt_ids: Sequence[int], path_ids: Sequence[int], reward: Reward,
                cfg: TreeConfig, *, progress: Optional[ProgressFn] = None,
                cancel: Optional[CancelToken] = None) -> TreeResult:
    """A new search whose root is the node reached by ``path_ids``: the horizon left is the
    original minus the path, and rewards score path + continuation."""
    path = [int(t) for t in path_ids]
    left = cfg.horizon - len(path)
    if left < 1:
        raise InputError(f"the node is at depth {len(path)}: no horizon left (horizon {cfg.horizon})")
    tok = lm.tokenizer

    def decode(ids: Sequence[int]) -> str:
        return tok.decode(list(ids), skip_special_tokens=True)

    sub = replace(cfg, horizon=left,
                  max_depth=None if cfg.max_depth is None else max(1, min(cfg.max_depth, left)))
    wrapped = PrefixedReward(reward, path, decode, prompt_ids)
    return run_tree_search(lm, list(prompt_ids) + path, wrapped, sub,  # type: ignore[arg-type]
                           progress=progress, cancel=cancel)
