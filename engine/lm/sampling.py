"""The logits pipeline: how every decode loop turns a step's logits into tokens. Built ONCE per
generation from a :class:`SamplingConfig` and used by single and batched generation, the
dashboard's methods, tree-search rollouts and AdvTok samples, so a setting means the same thing
everywhere (transformers splits its logits processors from ``generate`` the same way; the stop
rules are the other half, in engine/lm/stopping.py).

The stages, in transformers' order:

- *processors*, which depend on each row's history: repetition penalty (CTRL's rule: a seen
  token's positive logit is divided by the penalty, a negative one multiplied), banned ids;
- *warpers*: temperature, top-k, top-p, min-p (0 = greedy: argmax of the processed logits);
- the draw (seeded ``torch.Generator``).

Written for the decode step's budget: the history is a per-row seen-token mask updated in place
by :meth:`LogitsPipeline.advance` (never rebuilt from the ids), disabled stages cost nothing, and
top-p draws from a widened top-k slice (:func:`nucleus`) instead of sorting the vocabulary. Rows
follow the loop's batch through :meth:`~LogitsPipeline.select` and :meth:`~LogitsPipeline.repeat`.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from engine.errors import InputError
from engine.lm.config import SamplingConfig

#: one row's truncated policy: the kept token ids (int32) and their renormalised log-probabilities
Dist = tuple[torch.Tensor, torch.Tensor]


def make_generator(seed: Optional[int], device: torch.device | str = "cpu") -> Optional[torch.Generator]:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


NUCLEUS_START = 256


def nucleus(x: torch.Tensor, top_p: float, start: int = NUCLEUS_START
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-p nucleus of each row of (…, V) logits without sorting the vocabulary: a top-k
    slice, widened ×4 until its mass reaches ``top_p`` in every row (a full sort of 49K logits per
    row per step cost more than the forward at batch 16). Returns the slice's values (sorted,
    descending), their ids, their probabilities under the full softmax, and ``keep``: the smallest
    prefix whose mass reaches ``top_p`` (always at least one token)."""
    v = x.shape[-1]
    lse = torch.logsumexp(x, -1, keepdim=True)
    kk = min(v, start)
    while True:
        sx, idx = torch.topk(x, kk, dim=-1)
        p = (sx - lse).exp()
        cum = p.cumsum(-1)
        if kk == v or bool((cum[..., -1] >= top_p).all()):
            break
        kk = min(v, kk * 4)
    keep = (cum - p) < top_p  # the mass before this token has not reached p yet
    keep[..., 0] = True
    return sx, idx, p, keep


class LogitsPipeline:
    """Processors, warpers and the draw of one generation (see the module docstring).

    Per-row state: ``start(histories)`` sets each row's seen tokens, ``advance(tokens)`` adds the
    tokens just chosen, ``select``/``repeat`` follow the loop's batch. Only the repetition
    penalty reads it; with the penalty off the state is never built."""

    def __init__(self, cfg: SamplingConfig, device: torch.device | str = "cpu", *,
                 generator: Optional[torch.Generator] = None) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.greedy = cfg.greedy
        self.penalty = float(cfg.repetition_penalty)
        self.temperature = max(float(cfg.temperature), 1e-6)
        self.top_k = int(cfg.top_k)
        self.top_p = float(cfg.top_p)
        self.log_min_p = math.log(cfg.min_p) if cfg.min_p > 0 else None
        ids = sorted({int(i) for i in cfg.banned_ids})
        self.banned = torch.tensor(ids, dtype=torch.long, device=self.device) if ids else None
        self._banned_max = ids[-1] if ids else -1
        self.shared = generator  # one stream for every row (the tree search's own generator)
        self.seed = None if cfg.seed is None else int(cfg.seed)
        self.gens: list[torch.Generator] = []  # row r's stream: seed + r (see _uniform)
        self._width = NUCLEUS_START  # top-k slice width nucleus() starts from (see _nucleus)
        self._hist: Optional[list[list[int]]] = None  # histories not yet turned into a mask
        self.seen: Optional[torch.Tensor] = None  # (B, V) bool

    # ---- per-row history ------------------------------------------------------------------------
    @property
    def tracks_history(self) -> bool:
        return self.penalty != 1.0

    def start(self, histories: Sequence[Sequence[int]] | torch.Tensor) -> "LogitsPipeline":
        """One row per history (the ids the penalty counts as seen); each row's random stream
        starts afresh at seed + its index."""
        if isinstance(histories, torch.Tensor):
            histories = histories.view(histories.shape[0], -1).tolist()
        self._row_streams(len(histories))
        if self.tracks_history:
            self._hist = [[int(t) for t in h] for h in histories]
            self.seen = None
        return self

    def _row_streams(self, rows: int) -> None:
        if self.shared is None and self.seed is not None:
            self.gens = [make_generator(self.seed + r, self.device) for r in range(rows)]  # type: ignore[misc]

    def _seen(self, b: int, v: int) -> torch.Tensor:
        if self._hist is not None:
            seen = torch.zeros((len(self._hist), v), dtype=torch.bool, device=self.device)
            for r, h in enumerate(self._hist):
                ids = [t for t in h if 0 <= t < v]
                if ids:
                    seen[r, torch.tensor(ids, dtype=torch.long, device=self.device)] = True
            self.seen, self._hist = seen, None
        if self.seen is None:
            self.seen = torch.zeros((b, v), dtype=torch.bool, device=self.device)
        if self.seen.shape[0] != b:
            raise ValueError(f"pipeline tracks {self.seen.shape[0]} rows, logits have {b}")
        return self.seen

    def advance(self, tokens: torch.Tensor | Sequence[int]) -> None:
        """The tokens (B,) just chosen join their rows' histories (in place)."""
        if not self.tracks_history:
            return
        t = torch.as_tensor(tokens, dtype=torch.long, device=self.device).view(-1, 1)
        if self._hist is not None:
            for h, tok in zip(self._hist, t.view(-1).tolist()):
                h.append(tok)
        elif self.seen is not None:
            self.seen.scatter_(1, t.clamp(0, self.seen.shape[1] - 1), True)

    def select(self, rows: torch.Tensor | Sequence[int]) -> None:
        """Keep only these rows' state, in this order (rows that left the batch)."""
        if self.gens:
            self.gens = [self.gens[int(r)] for r in rows]
        if not self.tracks_history:
            return
        if self._hist is not None:
            self._hist = [list(self._hist[int(r)]) for r in rows]
        elif self.seen is not None:
            self.seen = self.seen[torch.as_tensor(rows, dtype=torch.long, device=self.device)]

    def repeat(self, n: int) -> None:
        """Each row's state repeated ``n`` times, row-major (as ``Forward.repeat``); the new rows'
        streams start at seed + their index, so sample i of a batch draws what a single
        generation seeded seed + i draws."""
        self._row_streams(max(1, len(self.gens)) * n)
        if not self.tracks_history:
            return
        if self._hist is not None:
            self._hist = [list(h) for h in self._hist for _ in range(n)]
        elif self.seen is not None:
            self.seen = self.seen.repeat_interleave(n, dim=0)

    # ---- the stages -------------------------------------------------------------------------------
    def adjust(self, logits: torch.Tensor) -> torch.Tensor:
        """The history processors on (B, V) logits: repetition penalty, banned ids. Returns
        ``logits`` itself when both are off, else a new tensor (the input is never changed: an
        observer may hold it)."""
        x = logits
        if self.tracks_history:
            seen = self._seen(x.shape[0], x.shape[-1])
            pen = torch.where(x > 0, x / self.penalty, x * self.penalty)
            x = torch.where(seen, pen, x)
        if self.banned is not None:
            if self._banned_max >= x.shape[-1]:
                raise InputError(f"banned token id {self._banned_max} is outside the vocabulary "
                                 f"(0–{x.shape[-1] - 1})")
            x = x.index_fill(-1, self.banned, float("-inf"))
        return x

    def _warp(self, x: torch.Tensor) -> torch.Tensor:
        """Temperature, top-k and (unless top-p follows, which applies it on its slice) min-p."""
        x = x / self.temperature
        if 0 < self.top_k < x.shape[-1]:
            kth = torch.topk(x, self.top_k, dim=-1).values[..., -1:]
            x = x.masked_fill(x < kth, float("-inf"))
        if self.log_min_p is not None and self.top_p >= 1.0:
            top = x.amax(-1, keepdim=True)
            x = x.masked_fill(x < top + self.log_min_p, float("-inf"))
        return x

    def _nucleus(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-p on warped logits, then min-p on the slice (p ≥ min_p · p_max; a prefix too).
        The slice starts as wide as the last step needed (consecutive steps of one answer need
        similar widths), so a flat distribution is not widened again from 256 every step; it
        narrows again once a quarter of it holds the mass."""
        sx, idx, p, keep = nucleus(x, self.top_p, start=self._width)
        kk = sx.shape[-1]
        if kk > NUCLEUS_START and bool((keep[..., kk // 4:].sum(-1) == 0).all()):
            kk //= 4
        self._width = kk
        if self.log_min_p is not None:
            keep = keep & (sx >= sx[..., :1] + self.log_min_p)
        return sx, idx, p, keep

    def _uniform(self, b: int) -> torch.Tensor:
        """One uniform number per row: from the shared generator, else from each row's own
        stream (seed + row), else torch's global one (no seed)."""
        if self.shared is not None:
            return torch.rand(b, generator=self.shared, device=self.device)
        if self.seed is None:
            return torch.rand(b, device=self.device)
        if len(self.gens) != b:
            self._row_streams(b)
        return torch.cat([torch.rand(1, generator=g, device=self.device) for g in self.gens])

    def _draw(self, w: torch.Tensor) -> torch.Tensor:
        """Index (B,) drawn ∝ the non-negative weights (B, K) by inverse CDF: one uniform per
        row, so a row's draw depends on neither the other rows nor how wide the slice is
        (``torch.multinomial`` consumes randomness per entry of the whole batch)."""
        c = w.cumsum(-1)
        u = self._uniform(w.shape[0]).to(c.dtype) * c[:, -1]
        j = torch.searchsorted(c, u.unsqueeze(-1), right=True).squeeze(-1)
        last = (c < c[:, -1:]).sum(-1)  # the last entry with weight (rounding may overshoot it)
        return torch.minimum(j, last)

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token ids (B,) from (B, V) fp32 logits: every stage, then the draw."""
        x = self.adjust(logits)
        if self.greedy:
            return x.argmax(-1)
        x = self._warp(x)
        if self.top_p < 1.0:  # draw within the nucleus only: same distribution, a fraction of the work
            _, idx, p, keep = self._nucleus(x)
            return idx.gather(-1, self._draw(p * keep).view(-1, 1)).view(-1)
        return self._draw(x.softmax(-1))

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) logits after every stage, filtered entries -inf (the full-vocabulary form)."""
        x = self._warp(self.adjust(logits))
        if self.top_p < 1.0:
            sx, idx, _, keep = self._nucleus(x)
            x = torch.full_like(x, float("-inf")).scatter(-1, idx, sx.masked_fill(~keep, float("-inf")))
        return x

    def truncated(self, logits: torch.Tensor, sample: bool = True
                  ) -> tuple[Optional[torch.Tensor], list[Dist]]:
        """The policy as each row's kept (ids, renormalised log q) — exactly the distribution
        the sampled tokens (R,) come from (None unless ``sample``). Without top-p every id is
        listed (filtered ones at -inf). Sampling policies only (the tree search's q)."""
        if self.greedy:
            raise InputError("a truncated policy needs temperature > 0")
        x = self._warp(self.adjust(logits.float()))
        R, V = x.shape
        if self.top_p >= 1.0:
            lp = x.log_softmax(-1)
            toks = self._draw(lp.exp()) if sample else None
            ids = torch.arange(V, dtype=torch.int32)
            return toks, [(ids, lp[r].clone()) for r in range(R)]
        sx, idx, p, keep = self._nucleus(x)
        toks = None
        if sample:
            toks = idx.gather(-1, self._draw(p * keep).view(-1, 1)).view(-1)
        dists = []
        for r, kr in enumerate(keep.sum(-1).tolist()):
            dists.append((idx[r, :kr].to(torch.int32).clone(), sx[r, :kr].log_softmax(-1).clone()))
        return toks, dists
