"""The batched rollout driver of the tree search: prefill the prompt once, then decode every
round's rollouts as ONE batch from the KV handles stored on the tree.

Rows leaving the same node share one forward of their start; rows from different nodes either
resume from their own cached states stacked into one batch (pad slots masked) or are re-fed from
their deepest common cached ancestor with left padding inside the new segment, a 2-D attention
mask and explicit position ids; rows that reach EOS or the horizon leave the batch
(``Forward.select``). Every resume is a ``Forward.fork`` (copy-free; stored caches never change).
q is the decode pipeline of engine/lm/sampling.py built once from the search's settings: its
history stage (repetition penalty) sees each row's prompt + path, and each node keeps the
truncated distribution its tokens were drawn from.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch

from engine.errors import ModelLoadError
from engine.lm.forward import get_forward
from engine.lm.sampling import Dist, LogitsPipeline
from engine.treesearch.config import TreeConfig
from engine.treesearch.node import KVHandle, Node, tokens_between
from engine.treesearch.tree import Tree

if TYPE_CHECKING:  # for annotations: no torch import for the TUI
    from engine.lm.model import LoadedModel

@dataclass
class Row:
    """One rollout of a round: where it leaves the tree and what it decoded."""

    start: Node
    path: list[Node]                       # selection path, root .. start
    tokens: list[int] = field(default_factory=list)
    dists: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # q after fed tokens
    kv: Optional[KVHandle] = None          # trajectory: start's token at keep0 - 1
    keep0: int = 0


class RolloutDriver:
    """Runs the forward passes of one search: the root prefill and each round's batched rollouts.
    Counts what it fed and decoded, and the K/V bytes of the trajectories it hands to the tree."""

    def __init__(self, lm: LoadedModel, prompt: Sequence[int], cfg: TreeConfig, tree: Tree,
                 gen: torch.Generator, check: Callable[[], None]) -> None:
        self.fwd = get_forward(lm)
        self.cfg = cfg
        self.tree = tree
        self.gen = gen
        self.check = check  # raises Cancelled between forwards
        self.prompt = [int(t) for t in prompt]
        self.P = len(self.prompt)
        self.device = lm.torch_device
        self.eos = set(int(e) for e in lm.eos_ids)
        # q: the shared generator keeps the search's draws in one seeded stream
        self.pipe = LogitsPipeline(cfg.sampling(), self.device, generator=gen)
        self.generated = 0
        self.prefilled = 0
        self.batches = 0
        self.padded = 0
        self.kv_bytes = 0
        self.t_prefill = self.t_roll = 0.0

    def register(self, kv: KVHandle) -> None:
        """Count a trajectory cache the tree now keeps (once per cache)."""
        self.kv_bytes += int(self.fwd.cache_bytes(kv.cache))

    def _q(self, logits: torch.Tensor, nodes: Sequence[Node]) -> list[Dist]:
        """q after each node (one row of ``logits`` per node), its history prompt + path."""
        self.pipe.start(self._histories(nodes))
        return self.pipe.truncated(logits, sample=False)[1]

    def _histories(self, nodes: Sequence[Node]) -> list[list[int]]:
        """What the pipeline's history stage counts as seen after each node (only built when a
        stage reads it)."""
        if not self.pipe.tracks_history:
            return [[] for _ in nodes]
        return [self.prompt + n.tokens() for n in nodes]

    def _ids(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    # ---- root
    def prefill_root(self) -> None:
        """Prefill the prompt once: the root's q and (with KV reuse) its handle."""
        self.check()
        t0 = time.perf_counter()
        cache = self.fwd.new_cache()
        logits = self.fwd.logits(self._ids([self.prompt]), cache, keep=1)[:, -1]
        root = self.tree.root
        root.logp = self._q(logits, [root])[0]
        if self.cfg.reuse_kv:
            try:
                self.fwd.fork(cache, keep=self.P)
            except NotImplementedError as e:  # e.g. sliding-window layers (Gemma 2/3)
                raise ModelLoadError(f"tree search needs a forkable KV cache: {e}",
                                     hint="this model's cache layout is not supported yet") from None
            root.kv = KVHandle(cache, self.P, None)
            self.register(root.kv)
        self.prefilled += self.P
        self.t_prefill = time.perf_counter() - t0

    # ---- one round of rollouts
    def _start_batch(self, rows: list[Row]) -> tuple[Any, Optional[torch.Tensor], int]:
        """Feed what the rows' start nodes need; return (cache with one row per Row, mask, keep)."""
        fwd, cfg = self.fwd, self.cfg
        distinct: list[Node] = []
        for r in rows:
            if r.start not in distinct:
                distinct.append(r.start)
        if not cfg.reuse_kv:  # naive: prompt + path from scratch (batch 1)
            s = distinct[0]
            seq = self.prompt + s.tokens()
            cache = fwd.new_cache()
            logits = fwd.logits(self._ids([seq]), cache, keep=1)[:, -1]
            self.prefilled += len(seq)
            if s.logp is None:
                s.logp = self._q(logits, [s])[0]
            return cache, None, len(seq)
        if len(distinct) > 1 and hasattr(fwd, "stack"):
            anchors = []
            for s in distinct:  # each start node's nearest state with a cache (itself or above)
                a = s
                while a.kv is None:
                    a = a.parent  # type: ignore[assignment]
                anchors.append(a)
            if len({id(a) for a in anchors}) > 1:
                return self._start_stacked(rows, distinct, anchors)
        if len(distinct) == 1 and distinct[0].kv is not None:
            base = distinct[0]
            tails: list[list[int]] = [[]]
        else:
            base = distinct[0].parent if len(distinct) == 1 else _common_ancestor(distinct)
            while base.kv is None:  # type: ignore[union-attr]
                base = base.parent  # type: ignore[union-attr]
            tails = [tokens_between(base, s) for s in distinct]  # type: ignore[arg-type]
        kv = base.kv  # type: ignore[union-attr]
        cache = fwd.fork(kv.cache, keep=kv.keep)
        mask = kv.mask[:kv.keep] if kv.mask is not None else None
        keep = kv.keep
        U = len(distinct)
        T = max(len(t) for t in tails)
        if T > 0:
            if U > 1:
                cache = fwd.repeat(cache, U)
            padded = any(len(t) < T for t in tails)
            ids, new, pos = self._left_pad(tails, [self.P + base.depth] * U)  # type: ignore[union-attr]
            if padded or mask is not None:
                self.padded += 1
                base_mask = mask if mask is not None else torch.ones(keep, dtype=torch.long, device=self.device)
                mask = torch.cat([base_mask.view(1, -1).expand(U, -1), new], dim=1)
            else:
                pos = None  # unpadded rows after an unpadded cache: positions follow the slots
            self._feed_tails(cache, ids, pos, mask, tails, distinct)
            keep += T
        elif mask is not None:
            mask = mask.view(1, -1)
        src = [distinct.index(r.start) for r in rows]
        if src != list(range(U)):
            cache = fwd.select(cache, torch.tensor(src, device=self.device)) if U > 1 or T > 0 \
                else fwd.repeat(cache, len(rows))
            if mask is not None:
                mask = mask[torch.tensor(src, device=mask.device)] if mask.shape[0] > 1 \
                    else mask.expand(len(rows), -1).contiguous()
        return cache, mask, keep

    def _left_pad(self, tails: list[list[int]], firsts: list[int]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tails left-padded to one length: (ids, 0/1 mask of the new slots, true positions —
        ``firsts[u]`` is the position of row u's first real tail token; pads repeat it)."""
        T = max(len(t) for t in tails)
        dev = self.device
        ids = self._ids([[0] * (T - len(t)) + t for t in tails])
        new = torch.tensor([[0] * (T - len(t)) + [1] * len(t) for t in tails], dtype=torch.long, device=dev)
        pos = torch.tensor([[f + max(j - (T - len(t)), 0) for j in range(T)] for f, t in zip(firsts, tails)],
                           dtype=torch.long, device=dev)
        return ids, new, pos

    def _feed_tails(self, cache: Any, ids: torch.Tensor, pos: Optional[torch.Tensor],
                    mask: Optional[torch.Tensor], tails: list[list[int]], distinct: list[Node]) -> None:
        """Feed the padded tails and store each start node's policy q (when it has none yet)."""
        self.check()
        logits = self.fwd.logits(ids, cache, position_ids=pos, attention_mask=mask, keep=1)[:, -1]
        self.prefilled += sum(len(t) for t in tails)
        for s, d in zip(distinct, self._q(logits, distinct)):
            if s.logp is None:
                s.logp = d

    def _start_stacked(self, rows: list[Row], distinct: list[Node], anchors: list[Node]
                       ) -> tuple[Any, Optional[torch.Tensor], int]:
        """Start nodes in different branches: each row resumes from its own nearest cached state
        (the trajectory caches stacked into one batch, right-aligned, pad slots masked), so only
        the few tokens between that state and the start node are fed — never the path from a
        common ancestor. Positions stay the true ones (prompt length + depth)."""
        fwd, dev = self.fwd, self.device
        U = len(distinct)
        keeps = [a.kv.keep for a in anchors]  # type: ignore[union-attr]
        L = max(keeps)
        cache = fwd.stack([(a.kv.cache, a.kv.keep) for a in anchors])  # type: ignore[union-attr]
        mask = torch.zeros((U, L), dtype=torch.long, device=dev)
        for u, a in enumerate(anchors):
            n = a.kv.keep  # type: ignore[union-attr]
            if a.kv.mask is not None:  # type: ignore[union-attr]
                mask[u, L - n:] = a.kv.mask[:n].to(dev)  # type: ignore[union-attr]
            else:
                mask[u, L - n:] = 1
        tails = [tokens_between(a, s) for a, s in zip(anchors, distinct)]
        T = max(len(t) for t in tails)
        keep = L
        self.padded += 1
        if T > 0:
            ids, new, pos = self._left_pad(tails, [self.P + a.depth for a in anchors])
            mask = torch.cat([mask, new], dim=1)
            self._feed_tails(cache, ids, pos, mask, tails, distinct)
            keep += T
        src = [distinct.index(r.start) for r in rows]
        if src != list(range(U)):
            idx = torch.tensor(src, device=dev)
            cache = fwd.select(cache, idx)
            mask = mask[idx.to(mask.device)]
        return cache, mask, keep

    def rollout_round(self, rows: list[Row],
                      on_step: Optional[Callable[[int, float], None]] = None) -> None:
        """Decode all rows together to EOS or the horizon; fills row.tokens/dists/kv.
        ``on_step(active rows, rollout seconds so far)`` runs after every decode step."""
        if not rows:
            return
        rows = [r for r in rows if not r.start.done]  # terminals drawn by widening: scored only
        if not rows:
            return
        fwd, H, pipe = self.fwd, self.cfg.horizon, self.pipe
        t0 = time.perf_counter()
        self.batches += 1
        cache, mask, keep = self._start_batch(rows)
        for r in rows:
            r.keep0 = keep
        pipe.start(self._histories([r.start for r in rows]))
        active = list(range(len(rows)))
        # first tokens from each start node's stored q
        toks = [self.tree.draw(rows[i].start) for i in active]
        while True:
            finished, still = [], []
            for j, i in enumerate(active):
                r = rows[i]
                r.tokens.append(toks[j])
                self.generated += 1
                if toks[j] in self.eos or r.start.depth + len(r.tokens) >= H:
                    finished.append(j)
                else:
                    still.append(j)
            if finished:
                for j in finished:
                    traj = cache if len(active) == 1 else fwd.select(cache, torch.tensor([j], device=self.device))
                    m = mask[j].clone() if mask is not None else None
                    rows[active[j]].kv = KVHandle(traj, keep, m)
                if not still:
                    break
                sel = torch.tensor(still, device=self.device)
                cache = fwd.select(cache, sel)
                pipe.select(sel)
                if mask is not None:
                    mask = mask[sel.to(mask.device)]
                active = [active[j] for j in still]
                toks = [toks[j] for j in still]
            self.check()
            ids = self._ids([[t] for t in toks])
            pos = None
            if mask is not None:
                mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=mask.device)], 1)
                pos = self._ids([[self.P + rows[i].start.depth + len(rows[i].tokens) - 1] for i in active])
            logits = fwd.logits(ids, cache, position_ids=pos, attention_mask=mask, keep=1)[:, -1]
            keep += 1
            pipe.advance(toks)
            nxt, dists = pipe.truncated(logits)
            for j, i in enumerate(active):
                rows[i].dists.append(dists[j])
            toks = nxt.tolist()  # type: ignore[union-attr]
            if on_step is not None:
                on_step(len(active), self.t_roll + time.perf_counter() - t0)
        self.t_roll += time.perf_counter() - t0


def _common_ancestor(nodes: Sequence[Node]) -> Node:
    """The deepest node every one of ``nodes`` descends from (or is)."""
    def chain(n: Node) -> list[Node]:
        out = []
        x: Optional[Node] = n
        while x is not None:
            out.append(x)
            x = x.parent
        return out[::-1]

    chains = [chain(n) for n in nodes]
    anc = chains[0][0]
    for level in zip(*chains):
        if all(x is level[0] for x in level):
            anc = level[0]
        else:
            break
    return anc
