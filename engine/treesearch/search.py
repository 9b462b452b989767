"""MaxEnt tree search over tokens: Diffusion Tree Sampling (DTS / DTS*) for an autoregressive LM.

Target π*(y) ∝ q(y|x)·exp(λ r(y)), q = the model at one fixed temperature / top-p (ALGORITHMS.md
§3). The same q drives the widening draws and the rollouts, so the soft values v̂ estimate
V(s) = (1/λ) log E_q[exp(λ r) | s], backed up with log-MEAN-exp over the draw counts.

Speed: the prompt is prefilled once; every rollout resumes from a KV handle (a trajectory cache and
a length) through ``Forward.fork`` (copy-free, the stored cache is never written). Each round
selects ``batch`` leaves; the rollouts leaving them decode as ONE batch: rows leaving the same node
share one forward of their start, rows from different nodes are re-fed from their deepest common
cached ancestor with left padding inside the new segment, a 2-D attention mask and explicit
position ids; rows that reach EOS or the horizon leave the batch (``Forward.select``).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional, Sequence

import torch

from engine.errors import ContextOverflow, InputError, ModelLoadError
from engine.lm.forward import get_forward
from engine.progress import Cancelled, CancelToken, ProgressFn, Ticker, report
from engine.treesearch.rewards import Completion, Reward, RewardError
from engine.lm.sampling import nucleus

MODES = ("search", "sample")


@dataclass
class TreeConfig:
    """Tree-search settings. ``horizon`` counts NEW tokens only; ``exploration`` (UCT bonus in
    search mode) is our addition to DTS* and 0 by default; ``widening_alpha`` > 0 lets the
    widening budget grow as N(s)^α (needed for consistency as rollouts → ∞); ``batch`` is how many
    rollouts one round decodes together; ``reuse_kv=False`` re-encodes prompt + path for every
    rollout (the naive baseline of the benchmark, batch 1 only)."""

    rollouts: int = 10
    widening: int = 3
    widening_alpha: float = 0.0
    lam: float = 1.0
    temperature: float = 1.0
    top_p: float = 0.95
    horizon: int = 50
    max_depth: Optional[int] = None
    exploration: float = 0.0
    mode: str = "search"
    n_samples: int = 1
    batch: int = 5
    seed: Optional[int] = 0
    reuse_kv: bool = True

    def validate(self, context_length: Optional[int] = None,
                 prompt_len: Optional[int] = None) -> "TreeConfig":
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise InputError(msg)

        need(isinstance(self.rollouts, int) and self.rollouts >= 1,
             f"rollouts must be ≥ 1 (got {self.rollouts})")
        need(isinstance(self.horizon, int) and self.horizon >= 1,
             f"horizon must be ≥ 1 new token (got {self.horizon})")
        need(isinstance(self.widening, int) and self.widening >= 1,
             f"widening budget must be ≥ 1 (got {self.widening})")
        need(0.0 <= self.widening_alpha <= 1.0, f"widening_alpha must be in [0, 1] (got {self.widening_alpha})")
        need(math.isfinite(self.lam) and 1e-9 <= self.lam <= 1e4, f"λ must be in [1e-9, 1e4] (got {self.lam})")
        need(math.isfinite(self.temperature) and 0.0 < self.temperature <= 100.0,
             f"base temperature must be in (0, 100] (got {self.temperature}); q must be a sampling policy")
        need(0.0 < self.top_p <= 1.0, f"top_p must be in (0, 1] (got {self.top_p})")
        need(math.isfinite(self.exploration) and self.exploration >= 0.0,
             f"exploration constant must be ≥ 0 (got {self.exploration})")
        need(self.mode in MODES, f"mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        need(isinstance(self.n_samples, int) and 1 <= self.n_samples <= 100_000,
             f"n_samples must be in [1, 100000] (got {self.n_samples})")
        need(isinstance(self.batch, int) and 1 <= self.batch <= 256, f"batch must be in [1, 256] (got {self.batch})")
        need(self.reuse_kv or self.batch == 1, "reuse_kv=False (naive re-encoding) runs one rollout at a time: batch must be 1")
        if self.max_depth is not None:
            need(isinstance(self.max_depth, int) and 1 <= self.max_depth,
                 f"max_depth must be ≥ 1 (got {self.max_depth})")
        if context_length is not None and prompt_len is not None:
            if prompt_len + self.horizon > context_length:
                raise ContextOverflow(
                    f"prompt ({prompt_len} tokens) + horizon ({self.horizon}) is beyond the context "
                    f"length {context_length}", hint=f"use --horizon ≤ {max(context_length - prompt_len, 0)}")
        return self

    @property
    def depth_cap(self) -> int:
        return min(self.max_depth or self.horizon, self.horizon)


@dataclass
class KVHandle:
    """Where a node's prefix lives: the first ``keep`` positions of a trajectory cache, with a
    0/1 ``mask`` over them when that cache holds pad slots (None: every slot is real)."""

    cache: Any
    keep: int
    mask: Optional[torch.Tensor] = None


class Node:
    """A state = prompt + the tokens from the root. ``m`` is how often the parent's draws from q
    produced this node; ``M`` the draws made at this node; ``value`` None while pending."""

    __slots__ = ("token", "parent", "depth", "children", "m", "M", "value", "visits", "done", "eos",
                 "reward", "logp", "kv", "lse", "n_roll", "roll_samples", "extra")

    def __init__(self, token: int, parent: Optional["Node"], depth: int) -> None:
        self.token = token
        self.parent = parent
        self.depth = depth
        self.children: dict[int, Node] = {}
        self.m = 0
        self.M = 0
        self.value: Optional[float] = None
        self.visits = 0
        self.done = False
        self.eos = False
        self.reward: Optional[float] = None
        self.logp: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (ids int32, log q) top-p
        self.kv: Optional[KVHandle] = None
        self.lse = -math.inf  # depth-capped leaves: log Σ exp(λ r) over their rollouts
        self.n_roll = 0
        self.roll_samples: list[tuple[float, tuple[int, ...]]] = []
        self.extra = 0  # widening budget added when search mode kept landing on known terminals

    def tokens(self) -> list[int]:
        """Tokens from the root to here (EOS included if this is an EOS node)."""
        out = []
        n: Optional[Node] = self
        while n is not None and n.parent is not None:
            out.append(n.token)
            n = n.parent
        return out[::-1]

    def __repr__(self) -> str:
        return (f"Node(tok={self.token}, d={self.depth}, m={self.m}, M={self.M}, v={self.value}, "
                f"N={self.visits}, done={self.done})")


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

    # ---- values
    def soft_value(self, node: Node) -> Optional[float]:
        """(1/λ)[logsumexp_a(λ v̂(s·a) + log m(s,a)) − log Σ m] over children that have a value
        (pending children are left out, never counted at v̂ = 0)."""
        vals = [(c.value, c.m) for c in node.children.values() if c.value is not None and c.m > 0]
        if not vals:
            return node.value
        lam = self.lam
        xs = [lam * v + math.log(m) for v, m in vals]
        top = max(xs)
        lse = top + math.log(sum(math.exp(x - top) for x in xs))
        return (lse - math.log(sum(m for _, m in vals))) / lam

    def backup(self, path: Sequence[Node]) -> None:
        """Recompute values leaf → root along ``path`` (the end node's value is already set)."""
        path[-1].visits += 1
        for u in reversed(path[:-1]):
            u.value = self.soft_value(u)
            u.visits += 1

    # ---- selection
    def select_child(self, node: Node) -> Node:
        """Sampling mode: a ~ m(s,a)·exp(λ v̂(s·a)); search mode: argmax v̂ (+ c·UCT bonus)."""
        kids = [c for c in node.children.values() if c.value is not None and c.m > 0]
        if not kids:  # only children drawn in this round so far
            pend = [c for c in node.children.values() if c.m > 0]
            if self.cfg.mode == "search":
                return max(pend, key=lambda c: c.m)
            w = torch.tensor([float(c.m) for c in pend])
            return pend[int(torch.multinomial(w, 1, generator=self.gen))]
        if self.cfg.mode == "sample":
            return kids[self._boltzmann([(c.value, c.m) for c in kids])]  # type: ignore[misc]
        c_exp = self.cfg.exploration
        if c_exp > 0:
            logn = math.log(max(node.visits, 1))
            return max(kids, key=lambda c: c.value + c_exp * math.sqrt(logn / max(c.visits, 1)))  # type: ignore[operator]
        return max(kids, key=lambda c: c.value)  # type: ignore[arg-type,return-value]

    def _boltzmann(self, vm: Sequence[tuple[float, float]]) -> int:
        lam = self.lam
        xs = torch.tensor([lam * v + math.log(m) for v, m in vm], dtype=torch.float64)
        return int(torch.multinomial((xs - xs.max()).exp(), 1, generator=self.gen))

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
                s = self.select_child(s)
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
                s = kids[self._boltzmann([(c.value, c.m) for c in kids])]  # type: ignore[misc]
                continue
            if s.roll_samples:
                j = self._boltzmann([(r, 1.0) for r, _ in s.roll_samples])
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


def tree_signature(node: Node) -> tuple:
    """A hashable picture of the tree (tokens, counts, visits, values) to compare two runs."""
    return (node.token, node.m, node.M, node.visits,
            None if node.value is None else round(node.value, 12),
            tuple(tree_signature(node.children[k]) for k in sorted(node.children)))


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
    ``stop_reason``: completed, cancelled, reward_error."""

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
    tree: Optional[Tree] = field(default=None, repr=False, compare=False)  # for live views / tests

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


def resume_logits(lm: Any, node: Node, tokens: Sequence[int], prompt_len: int) -> torch.Tensor:
    """Logits (V,) after feeding ``tokens`` from ``node``'s KV handle, the way rollouts resume
    (fork of the stored trajectory; mask and explicit positions when it holds pad slots)."""
    fwd = get_forward(lm)
    kv = node.kv
    if kv is None:
        raise ValueError("node has no KV handle")
    cache = fwd.fork(kv.cache, keep=kv.keep)
    ids = torch.tensor([list(tokens)], dtype=torch.long, device=lm.torch_device)
    mask = pos = None
    if kv.mask is not None:
        mask = torch.cat([kv.mask[:kv.keep], torch.ones(len(tokens), dtype=kv.mask.dtype,
                                                          device=kv.mask.device)]).view(1, -1)
        pos = (prompt_len + node.depth + torch.arange(len(tokens), device=ids.device)).view(1, -1)
    return fwd.logits(ids, cache, position_ids=pos, attention_mask=mask, keep=1)[0, -1]


# ---------------------------------------------------------------- the search

@dataclass
class _Row:
    start: Node
    path: list[Node]                       # selection path, root .. start
    tokens: list[int] = field(default_factory=list)
    dists: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # q after fed tokens
    kv: Optional[KVHandle] = None          # trajectory: start's token at keep0 - 1
    keep0: int = 0


def policy(logits: torch.Tensor, temperature: float, top_p: float,
           generator: Optional[torch.Generator], sample: bool = True,
           ) -> tuple[Optional[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    """q on (R, V) logits: temperature, then top-p (smallest set reaching p, at least one token).
    Returns sampled tokens (R,) (None unless ``sample``) and each row's truncated
    (ids, renormalised log q), which is exactly the distribution the tokens were drawn from."""
    x = logits.float() / temperature
    R, V = x.shape
    if top_p >= 1.0:
        lp = x.log_softmax(-1)
        toks = torch.multinomial(lp.exp(), 1, generator=generator).squeeze(-1) if sample else None
        ids = torch.arange(V, dtype=torch.int32)
        return toks, [(ids, lp[r].clone()) for r in range(R)]
    sx, idx, p, keep = nucleus(x, top_p)  # no full-vocabulary sort
    toks = None
    if sample:
        j = torch.multinomial(p * keep, 1, generator=generator).squeeze(-1)
        toks = idx.gather(-1, j.view(-1, 1)).squeeze(-1)
    dists = []
    for r, kr in enumerate(keep.sum(-1).tolist()):
        dists.append((idx[r, :kr].to(torch.int32).clone(), sx[r, :kr].log_softmax(-1).clone()))
    return toks, dists


class _Search:
    def __init__(self, lm: Any, prompt_ids: Sequence[int], reward: Reward, cfg: TreeConfig,
                 progress: Optional[ProgressFn], cancel: Optional[CancelToken]) -> None:
        self.lm = lm
        self.fwd = get_forward(lm)
        self.cfg = cfg
        self.reward = reward
        self.progress = progress
        self.cancel = cancel
        self.prompt = [int(t) for t in prompt_ids]
        self.P = len(self.prompt)
        self.device = lm.torch_device
        self.gen = torch.Generator(device="cpu")
        self.gen.manual_seed(int(cfg.seed) if cfg.seed is not None else int(torch.seed() % 2**62))
        self.eos = set(int(e) for e in lm.eos_ids)
        self.tree = Tree(cfg, self.gen, eos_ids=self.eos)
        self.best: Optional[TreeSample] = None
        self.done_rollouts = 0
        self.revisits = 0
        self.generated = 0
        self.prefilled = 0
        self.batches = 0
        self.padded = 0
        self.kv_bytes = 0
        self.t_prefill = self.t_roll = self.t_reward = 0.0
        self._text_cache: dict[int, str] = {}
        self.tick = Ticker(0.1)

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

    def _register(self, kv: KVHandle) -> None:
        self.kv_bytes += int(self.fwd.cache_bytes(kv.cache))

    def _ids(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    # ---- root
    def prefill_root(self) -> None:
        self._check()
        t0 = time.perf_counter()
        cache = self.fwd.new_cache()
        logits = self.fwd.logits(self._ids([self.prompt]), cache, keep=1)[:, -1]
        _, dists = policy(logits, self.cfg.temperature, self.cfg.top_p, None, sample=False)
        root = self.tree.root
        root.logp = dists[0]
        if self.cfg.reuse_kv:
            try:
                self.fwd.fork(cache, keep=self.P)
            except NotImplementedError as e:  # e.g. sliding-window layers (Gemma 2/3)
                raise ModelLoadError(f"tree search needs a forkable KV cache: {e}",
                                     hint="this model's cache layout is not supported yet") from None
            root.kv = KVHandle(cache, self.P, None)
            self._register(root.kv)
        self.prefilled += self.P
        self.t_prefill = time.perf_counter() - t0

    # ---- one round of rollouts
    def _start_batch(self, rows: list[_Row]) -> tuple[Any, Optional[torch.Tensor], int]:
        """Feed what the rows' start nodes need; return (cache with one row per _Row, mask, keep)."""
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
            _, dists = policy(logits, cfg.temperature, cfg.top_p, None, sample=False)
            if s.logp is None:
                s.logp = dists[0]
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
            tails = [_tokens_between(base, s) for s in distinct]  # type: ignore[arg-type]
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
        cfg = self.cfg
        self._check()
        logits = self.fwd.logits(ids, cache, position_ids=pos, attention_mask=mask, keep=1)[:, -1]
        self.prefilled += sum(len(t) for t in tails)
        _, dists = policy(logits, cfg.temperature, cfg.top_p, None, sample=False)
        for s, d in zip(distinct, dists):
            if s.logp is None:
                s.logp = d

    def _start_stacked(self, rows: list[_Row], distinct: list[Node], anchors: list[Node]
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
        tails = [_tokens_between(a, s) for a, s in zip(anchors, distinct)]
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

    def rollout_round(self, rows: list[_Row]) -> None:
        """Decode all rows together to EOS or the horizon; fills row.tokens/dists/kv."""
        if not rows:
            return
        rows = [r for r in rows if not r.start.done]  # terminals drawn by widening: scored only
        if not rows:
            return
        fwd, cfg, H = self.fwd, self.cfg, self.cfg.horizon
        t0 = time.perf_counter()
        self.batches += 1
        cache, mask, keep = self._start_batch(rows)
        for r in rows:
            r.keep0 = keep
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
                if mask is not None:
                    mask = mask[sel.to(mask.device)]
                active = [active[j] for j in still]
                toks = [toks[j] for j in still]
            self._check()
            ids = self._ids([[t] for t in toks])
            pos = None
            if mask is not None:
                mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=mask.device)], 1)
                pos = self._ids([[self.P + rows[i].start.depth + len(rows[i].tokens) - 1] for i in active])
            logits = fwd.logits(ids, cache, position_ids=pos, attention_mask=mask, keep=1)[:, -1]
            keep += 1
            nxt, dists = policy(logits, cfg.temperature, cfg.top_p, self.gen)
            for j, i in enumerate(active):
                rows[i].dists.append(dists[j])
            toks = nxt.tolist()  # type: ignore[union-attr]
            if self.progress is not None and self.tick.due():
                el = self.t_roll + time.perf_counter() - t0
                report(self.progress, "tree", self.done_rollouts, cfg.rollouts,
                       f"decoding {len(active)} rollout(s)", **self._metrics(el))
        self.t_roll += time.perf_counter() - t0

    # ---- after a round
    def _insert(self, row: _Row) -> list[Node]:
        """Append the row's states to the tree as a chain; returns the full path to its end."""
        tree, cfg = self.tree, self.cfg
        path = list(row.path)
        node = row.start
        if cfg.reuse_kv and node.kv is None and row.kv is not None:
            node.kv = KVHandle(row.kv.cache, row.keep0, row.kv.mask)
        cap = cfg.depth_cap
        for k, tok in enumerate(row.tokens, 1):
            if node.depth >= cap and not node.done:
                break  # deeper states are not stored; ``node`` keeps this rollout's statistics
            is_eos = tok in self.eos
            child = node.children.get(tok)
            if child is None:
                child = tree.add_child(node, tok, eos=is_eos)
            child.m += 1
            node.M += 1
            fed = k < len(row.tokens)
            if fed:
                if child.logp is None:
                    child.logp = row.dists[k - 1]
                if cfg.reuse_kv and child.kv is None and row.kv is not None:
                    child.kv = KVHandle(row.kv.cache, row.keep0 + k, row.kv.mask)
            path.append(child)
            node = child
        return path

    def _completion_ids(self, row: _Row) -> list[int]:
        toks = [n.token for n in row.path[1:]] + row.tokens
        if toks and toks[-1] in self.eos:
            toks = toks[:-1]
        return toks

    def finish_round(self, rows: list[_Row], terminals: list[list[Node]]) -> None:
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
                self._register(row.kv)
            path = self._insert(row)
            end = path[-1]
            if end.done:
                if end.value is None:
                    end.value = end.reward = r
            else:  # depth-capped leaf: Monte-Carlo soft value of its rollouts
                end.lse = float(torch.logaddexp(torch.tensor(end.lse, dtype=torch.float64),
                                                torch.tensor(self.tree.lam * r, dtype=torch.float64)))
                end.n_roll += 1
                end.value = (end.lse - math.log(end.n_roll)) / self.tree.lam
                end.roll_samples.append((r, tuple(comp)))
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
        best_text = self.best.text if self.best else ""
        return {"rollouts": self.done_rollouts, "nodes": st["nodes"], "depth": st["max_depth"],
                "mean_branching": st["mean_branching"],
                "best_reward": None if self.best is None else round(self.best.reward, 4),
                "best_text": best_text[-160:], "root_value": round(self.tree.root.value or 0.0, 4),
                "tok_s": round(self.generated / roll_s, 1) if roll_s > 0 else 0.0,
                "decoded_tokens": self.generated, "kv_bytes": self.kv_bytes,
                "root_children": [(c["token"], c["visits"], c["value"]) for c in self.root_children(8)]}

    def _report(self) -> None:
        if self.progress is None:
            return
        best = "—" if self.best is None else f"{self.best.reward:.3f}"
        report(self.progress, "tree", self.done_rollouts, self.cfg.rollouts,
               f"rollout {self.done_rollouts}/{self.cfg.rollouts} · best reward {best}",
               **self._metrics(self.t_roll))

    # ---- main loop
    def run(self) -> TreeResult:
        cfg = self.cfg
        t0 = time.perf_counter()
        stop, error = "completed", ""
        try:
            self.reward.prepare(self.lm, self.prompt)
            self.prefill_root()
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
                        rows.append(_Row(path[-1], path))
                self.rollout_round(rows)
                self.finish_round(rows, terminals)
        except Cancelled:
            stop = "cancelled"
        except RewardError as e:
            stop, error = "reward_error", str(e)
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
        return TreeResult(
            mode=cfg.mode, best=self.best, samples=samples, stop_reason=stop, error=error,
            rollouts_done=self.done_rollouts, rollouts_total=cfg.rollouts, nodes=st["nodes"],
            max_depth=st["max_depth"], mean_branching=st["mean_branching"],
            root_value=float(self.tree.root.value or 0.0), root_children=self.root_children(),
            terminal_revisits=self.revisits, generated_tokens=self.generated,
            prefill_tokens=self.prefilled, batches=self.batches, padded_batches=self.padded,
            kv_bytes=self.kv_bytes, logp_bytes=st["logp_bytes"], total_s=total, prefill_s=self.t_prefill, rollout_s=self.t_roll,
            reward_s=self.t_reward, tok_s=self.generated / self.t_roll if self.t_roll > 0 else 0.0,
            forward=getattr(self.fwd, "name", type(self.fwd).__name__), config=asdict(cfg),
            reward=self.reward.to_dict(), tree=self.tree)


def _tokens_between(anc: Node, node: Node) -> list[int]:
    out = []
    n: Optional[Node] = node
    while n is not None and n is not anc:
        out.append(n.token)
        n = n.parent
    return out[::-1]


def _common_ancestor(nodes: Sequence[Node]) -> Node:
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


def run_tree_search(lm: Any, prompt_ids: Sequence[int], reward: Reward, cfg: TreeConfig, *,
                    progress: Optional[ProgressFn] = None,
                    cancel: Optional[CancelToken] = None) -> TreeResult:
    """MaxEnt tree search from ``prompt_ids`` (already chat-templated) toward ``reward``.

    Always returns a well-formed result: on cancel or a failing reward, the best terminal seen so
    far and the statistics of the tree built so far, with ``stop_reason`` saying why."""
    if prompt_ids is None or len(prompt_ids) == 0:
        raise InputError("nothing to search from: the prompt has no tokens")
    cfg.validate(lm.context_length, len(prompt_ids))
    return _Search(lm, prompt_ids, reward, cfg, progress, cancel).run()
