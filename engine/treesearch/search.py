"""MaxEnt tree search over tokens: Diffusion Tree Sampling (DTS / DTS*) for an autoregressive LM.

Target π*(y) ∝ q(y|x)·exp(λ r(y)), q = the model at one fixed temperature / top-p
(docs/algorithms.md §3). The same q drives the widening draws and the rollouts, so the soft
values v̂ estimate V(s) = (1/λ) log E_q[exp(λ r) | s], backed up with log-MEAN-exp over the draw
counts.

This module holds the result and the loop that ties the parts together (the settings are in
``config.py``): the tree and its backup (``tree.py``), the policy q and the selection rules
(``policy.py``), and the batched rollout driver that resumes from stored KV handles (``rollout.py``).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

from engine.errors import InputError
from engine.progress import Cancelled, CancelToken, ProgressFn, Ticker, report
from engine.treesearch.config import MODES, TreeConfig  # noqa: F401  (re-exported)
from engine.treesearch.node import Node
from engine.treesearch.rewards import Completion, Reward, RewardError
from engine.treesearch.rollout import RolloutDriver, Row
from engine.treesearch.tree import Tree

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


# ---------------------------------------------------------------- results

@dataclass
class TreeSample:
    text: str
    token_ids: list[int]
    reward: float


@dataclass
class TreeResult:
    """What a search returns. ``best`` is the best (reward, sequence) terminal actually observed
    (never a value estimate); ``samples`` are Boltzmann-descent answers in sample mode.
    ``stop_reason``: completed, cancelled, reward_error. ``partial`` holds the text of the
    rollouts that were still decoding when a cancel landed (unscored, not in the tree)."""

    mode: str
    best: Optional[TreeSample]
    samples: list[TreeSample]
    stop_reason: str
    error: str = ""
    rollouts_done: int = 0
    rollouts_total: int = 0
    nodes: int = 1
    max_depth: int = 0
    mean_branching: float = 0.0
    root_value: float = 0.0
    root_children: list[dict[str, Any]] = field(default_factory=list)
    terminal_revisits: int = 0
    generated_tokens: int = 0
    prefill_tokens: int = 0
    batches: int = 0
    padded_batches: int = 0
    kv_bytes: int = 0
    logp_bytes: int = 0
    total_s: float = 0.0
    prefill_s: float = 0.0
    rollout_s: float = 0.0
    reward_s: float = 0.0
    tok_s: float = 0.0
    forward: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    reward: dict[str, Any] = field(default_factory=dict)
    partial: list[str] = field(default_factory=list)
    tree: Optional[Tree] = field(default=None, repr=False, compare=False)  # for live views / tests

    @property
    def stopped(self) -> bool:
        """True when the search was cancelled before its rollout budget."""
        return self.stop_reason == "cancelled"

    @property
    def best_text(self) -> str:
        return self.best.text if self.best else ""

    @property
    def best_reward(self) -> Optional[float]:
        return self.best.reward if self.best else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the tree object itself is left out)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "tree"}
        out["best"] = asdict(self.best) if self.best else None
        out["samples"] = [asdict(x) for x in self.samples]
        return out


class _Search:
    """One search: selection rounds over the tree, rollouts through the driver, scoring, backup."""

    def __init__(self, lm: LoadedModel, prompt_ids: Sequence[int], reward: Reward, cfg: TreeConfig,
                 progress: Optional[ProgressFn], cancel: Optional[CancelToken]) -> None:
        self.lm = lm
        self.cfg = cfg
        self.reward = reward
        self.progress = progress
        self.cancel = cancel
        self.prompt = [int(t) for t in prompt_ids]
        self.gen = torch.Generator(device="cpu")
        self.gen.manual_seed(int(cfg.seed) if cfg.seed is not None else int(torch.seed() % 2**62))
        self.eos = set(int(e) for e in lm.eos_ids)
        self.tree = Tree(cfg, self.gen, eos_ids=self.eos)
        self.roll = RolloutDriver(lm, self.prompt, cfg, self.tree, self.gen, self._check)
        self.best: Optional[TreeSample] = None
        self.rows: list[Row] = []            # the round being decoded (its text kept on cancel)
        self.done_rollouts = 0
        self.revisits = 0
        self.t_reward = 0.0
        self._text_cache: dict[int, str] = {}
        self.tick = Ticker(0.1)
        self.round = 0

    # ---- helpers
    def _check(self) -> None:
        if self.cancel is not None:
            self.cancel.check()

    def _tok_text(self, t: int) -> str:
        s = self._text_cache.get(t)
        if s is None:
            s = self.lm.tokenizer.decode([t], skip_special_tokens=False)
            self._text_cache[t] = s
        return s

    def _decode(self, ids: Sequence[int]) -> str:
        return self.lm.tokenizer.decode(list(ids), skip_special_tokens=False)

    # ---- after a round
    def _completion_ids(self, row: Row) -> list[int]:
        toks = [n.token for n in row.path[1:]] + row.tokens
        if toks and toks[-1] in self.eos:
            toks = toks[:-1]
        return toks

    def finish_round(self, rows: list[Row], terminals: list[list[Node]]) -> None:
        """Score, insert and back up each rollout (a reward error stops before any backup)."""
        t0 = time.perf_counter()
        comps = [self._completion_ids(r) for r in rows]
        texts = [self._decode(c) for c in comps]
        items = [Completion(t, tuple(c), tuple(self.prompt)) for t, c in zip(texts, comps)]
        rewards = self.reward.score_many(items) if items else []
        self.t_reward += time.perf_counter() - t0
        registered: set[int] = set()
        for row, r, text, comp in zip(rows, rewards, texts, comps):
            if row.kv is not None and id(row.kv.cache) not in registered and self.cfg.reuse_kv:
                registered.add(id(row.kv.cache))
                self.roll.register(row.kv)
            path = self.tree.insert_rollout(row.path, row.tokens, row.dists, row.kv, row.keep0)
            self.tree.set_leaf_value(path[-1], r, comp)
            self._observe(r, comp, text)
            self.tree.backup(path)
            self.done_rollouts += 1
            self._report()
        for path in terminals:  # selections that ended on a known terminal: reward already known
            end = path[-1]
            self.revisits += 1
            self.tree.backup(path)
            self.done_rollouts += 1
            self._report()

    def _observe(self, r: float, comp: list[int], text: str) -> None:
        if self.best is None or r > self.best.reward:
            self.best = TreeSample(text, list(comp), float(r))

    # ---- progress
    def root_children(self, limit: int = 12) -> list[dict[str, Any]]:
        kids = sorted(self.tree.root.children.values(), key=lambda c: (-c.visits, -c.m))[:limit]
        return [{"token": self._tok_text(c.token), "id": c.token, "visits": c.visits, "draws": c.m,
                 "value": None if c.value is None else round(c.value, 4)} for c in kids]

    def _metrics(self, roll_s: float) -> dict[str, Any]:
        st = self.tree.stats()
        roll = self.roll
        best_text = self.best.text if self.best else ""
        return {"rollouts": self.done_rollouts, "nodes": st["nodes"], "depth": st["max_depth"],
                "mean_branching": st["mean_branching"],
                "best_reward": None if self.best is None else round(self.best.reward, 4),
                "best_text": best_text[-160:], "root_value": round(self.tree.root.value or 0.0, 4),
                "tok_s": round(roll.generated / roll_s, 1) if roll_s > 0 else 0.0,
                "decoded_tokens": roll.generated, "kv_bytes": roll.kv_bytes,
                "root_children": [(c["token"], c["visits"], c["value"]) for c in self.root_children(8)]}

    def _report(self) -> None:
        if self.progress is None:
            return
        best = "—" if self.best is None else f"{self.best.reward:.3f}"
        report(self.progress, "tree", self.done_rollouts, self.cfg.rollouts,
               f"rollout {self.done_rollouts}/{self.cfg.rollouts} · best reward {best}",
               **self._metrics(self.roll.t_roll))

    def _round_fraction(self) -> float:
        """Rollouts done, counting the round being decoded by its tokens: each row's share of
        the horizon it has reached (a row that has ended counts whole). The bar and the ETA move
        inside a round, which is the whole search when the batch holds every rollout."""
        H = max(1, self.cfg.horizon)
        part = sum(1.0 if r.kv is not None else min(1.0, (r.start.depth + len(r.tokens)) / H)
                   for r in self.rows)
        return min(1.0, (self.done_rollouts + part) / max(1, self.cfg.rollouts))

    def _on_step(self, active: int, roll_s: float) -> None:
        """Progress while a round decodes (at most every 0.1 s)."""
        if self.progress is not None and self.tick.due():
            deepest = max((r.start.depth + len(r.tokens) for r in self.rows), default=0)
            report(self.progress, "tree", self.done_rollouts, self.cfg.rollouts,
                   f"round {self.round}: decoding {active} of {len(self.rows)} rollout(s) · "
                   f"token {min(deepest, self.cfg.horizon)}/{self.cfg.horizon}",
                   done_fraction=round(self._round_fraction(), 4), **self._metrics(roll_s))

    # ---- main loop
    def run(self) -> TreeResult:
        cfg = self.cfg
        t0 = time.perf_counter()
        stop, error = "completed", ""
        try:
            report(self.progress, "tree", 0, cfg.rollouts, f"preparing the reward ({self.reward.spec})"
                   if getattr(self.reward, "spec", "") else "preparing the reward")
            self.reward.prepare(self.lm, self.prompt)
            report(self.progress, "tree", 0, cfg.rollouts,
                   f"prefilling the prompt ({len(self.prompt):,} tokens)")
            self.roll.prefill_root()
            while self.done_rollouts < cfg.rollouts:
                self._check()
                k = min(cfg.batch, cfg.rollouts - self.done_rollouts)
                rows, terminals = [], []
                for _ in range(k):
                    path = self.tree.select()
                    tries = 0
                    # search mode: landing on an already-scored terminal teaches nothing, so its
                    # parent widens instead (one more draw from q, counts stay unbiased)
                    while (cfg.mode == "search" and path[-1].done and path[-1].value is not None
                           and tries < 8):
                        path[-2].extra += 1
                        tries += 1
                        path = self.tree.select()
                    if path[-1].done and path[-1].value is not None:
                        terminals.append(path)
                    else:
                        rows.append(Row(path[-1], path))
                self.rows = rows
                self.round += 1
                self.tick = Ticker(0.1)  # the round's first step reports at once
                self.roll.rollout_round(rows, self._on_step)
                self.rows = []
                self.finish_round(rows, terminals)
        except Cancelled:
            stop = "cancelled"
        except RewardError as e:
            stop, error = "reward_error", str(e)
        partial = [self._decode(self._completion_ids(r)) for r in self.rows
                   if stop == "cancelled" and r.tokens]
        self.tree.drop_pending()
        samples: list[TreeSample] = []
        if cfg.mode == "sample" and self.done_rollouts > 0:
            for _ in range(cfg.n_samples):
                got = self.tree.descend()
                if got is not None:
                    toks, r = got
                    samples.append(TreeSample(self._decode(toks), list(toks), r))
        total = time.perf_counter() - t0
        st = self.tree.stats()
        roll = self.roll
        return TreeResult(
            mode=cfg.mode, best=self.best, samples=samples, stop_reason=stop, error=error,
            rollouts_done=self.done_rollouts, rollouts_total=cfg.rollouts, nodes=st["nodes"],
            max_depth=st["max_depth"], mean_branching=st["mean_branching"],
            root_value=float(self.tree.root.value or 0.0), root_children=self.root_children(),
            terminal_revisits=self.revisits, generated_tokens=roll.generated,
            prefill_tokens=roll.prefilled, batches=roll.batches, padded_batches=roll.padded,
            kv_bytes=roll.kv_bytes, logp_bytes=st["logp_bytes"], total_s=total,
            prefill_s=roll.t_prefill, rollout_s=roll.t_roll, reward_s=self.t_reward,
            tok_s=roll.generated / roll.t_roll if roll.t_roll > 0 else 0.0,
            forward=getattr(roll.fwd, "name", type(roll.fwd).__name__), config=asdict(cfg),
            reward=self.reward.to_dict(), partial=partial, tree=self.tree)


def run_tree_search(lm: LoadedModel, prompt_ids: Sequence[int], reward: Reward, cfg: TreeConfig, *,
                    progress: Optional[ProgressFn] = None,
                    cancel: Optional[CancelToken] = None) -> TreeResult:
    """MaxEnt tree search from ``prompt_ids`` (already chat-templated) toward ``reward``.

    Always returns a well-formed result: on cancel or a failing reward, the best terminal seen so
    far and the statistics of the tree built so far, with ``stop_reason`` saying why."""
    if prompt_ids is None or len(prompt_ids) == 0:
        raise InputError("nothing to search from: the prompt has no tokens")
    cfg.validate(lm.context_length, len(prompt_ids))
    return _Search(lm, prompt_ids, reward, cfg, progress, cancel).run()
