"""Scoring candidate tokenizations for AdvTok (docs/algorithms.md §2.1, §2.3).

A candidate V sits in the row ``SP ⊕ H ⊕ F_pre ⊕ V ⊕ F_suf ⊕ U ⊕ R``; its score is the summed
log-probability of the ``U ⊕ R`` tokens minus ``log(|V| + A)`` (A = every token around V).
Scoring is the whole cost of a search, so :class:`CandidateScorer` does as little work as the
objective allows:

- the prefix ``SP ⊕ H ⊕ F_pre`` is prefilled once per run; each batch runs on a fork of that
  cache repeated per row (the stored tensors are never written);
- rows ``V ⊕ F_suf ⊕ U ⊕ R`` are right-padded with a 2-D attention mask (cached + new, zeros at
  pads) and explicit position ids, so real tokens sit at their true positions;
- only the hidden states that predict a ``U ⊕ R`` token go through the LM head
  (log-softmax in fp32, sums in fp64);
- with a *trunk* (the search's current X), a candidate's tokens shared with X up to its first
  edit are not forwarded again: X is fed once on top of the prefix and each batch forks that
  cache at the batch's shortest shared prefix (a one-level "candidate trie", docs/algorithms.md
  §2.3: distance-2 neighbours share X's tokens up to their first edit); batches are cut by a
  small DP that minimises the tokens fed (padding + re-fed shared tokens);
- scores are memoised by ``tuple(ids)`` for the run, candidates are batched in length order, the
  batch size comes from a token budget, the memory a batch may use (engine.budget: the same
  usable share, per-row bound and out-of-memory test as the response sampler's and the judges'
  batches) and a user cap, and halves on out-of-memory.

:func:`reference_scores` is the reference implementation's shape (full prompt rows, no cache,
full-vocabulary head at every position). It exists only so tests and ``bench/advtok.py`` can
check and measure the scorer against it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

from engine.advtok.config import DEFAULT_TOKEN_BUDGET
from engine.budget import is_oom
from engine.errors import EngineError, InputError
from engine.lm.forward import get_forward
from engine.progress import CancelToken, ProgressFn, check, report

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

HEAD_CHUNK_FLOATS = 16 * 1024 * 1024  # logits materialised at once (64 MB fp32)
BATCH_OVERHEAD_TOKENS = 8         # fixed cost of one more batch, in token-forwards (a guess)


def length_term(n_candidate: int, n_around: int) -> float:
    """The length normalisation ``log(|V| + A)`` subtracted from every score."""
    return math.log(n_candidate + n_around)


@dataclass
class ScorerStats:
    """What the scorer has done so far in this run."""

    scored: int = 0              # candidates forwarded
    memo_hits: int = 0           # candidates answered from the memo
    batches: int = 0
    tokens: int = 0              # real (unpadded) row tokens forwarded, prefix excluded
    padded_tokens: int = 0       # B · Lmax summed over batches
    head_positions: int = 0      # hidden states that went through the LM head
    seconds: float = 0.0         # time inside forward passes
    prefix_s: float = 0.0
    oom_halvings: int = 0
    batch_size: int = 0          # the current batch size
    trunk_tokens: int = 0        # trunk (X) tokens fed to build shared caches
    shared_tokens: int = 0       # candidate tokens not forwarded thanks to the trunk cache
    flops: float = 0.0           # analytic work of every forward (see forward_flops)

    @property
    def candidates_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class CandidateScorer:
    """Batched, prefix-cached, memoised scorer for one (prefix, suffix, targets) setting.

    ``prefix_ids`` = SP ⊕ H ⊕ F_pre (prefilled once), ``between_ids`` = F_suf (fed, not scored),
    ``target_ids`` = U ⊕ R (scored). ``batch_cap`` bounds the rows per batch; ``token_budget``
    bounds rows × row length."""

    lm: LoadedModel
    prefix_ids: list[int]
    between_ids: list[int]
    target_ids: list[int]
    length_norm: bool = True
    token_budget: int = DEFAULT_TOKEN_BUDGET
    batch_cap: Optional[int] = None
    share_trunk: bool = True
    stats: ScorerStats = field(default_factory=ScorerStats)
    memo: dict[tuple[int, ...], float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.target_ids:
            raise InputError("nothing to score: the response and user-turn tail are empty")
        if self.batch_cap is not None and self.batch_cap < 1:
            raise InputError(f"batch cap must be ≥ 1 (got {self.batch_cap})")
        if self.token_budget < 1:
            raise InputError(f"token budget must be ≥ 1 (got {self.token_budget})")
        self.fwd = get_forward(self.lm, exact=True)  # scoring never runs inexact
        self.device = self.lm.torch_device
        self.n_around = len(self.prefix_ids) + len(self.between_ids) + len(self.target_ids)
        self._prefix_cache: Any = None
        self._trunk: Optional[tuple[tuple[int, ...], Any]] = None
        self._halved_cap: Optional[int] = None
        tok = self.lm.tokenizer
        pad = getattr(tok, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else int(self.lm.eos_ids[0] if self.lm.eos_ids else 0)
        cfg = self.lm.model.config
        self._vocab = int(getattr(cfg, "vocab_size", 0) or 0) or len(tok)

    # ------------------------------------------------------------------ prefix
    @property
    def prefix_cache(self) -> Any:
        """The prefilled SP ⊕ H ⊕ F_pre cache (built on first use; never mutated afterwards)."""
        if self._prefix_cache is None:
            t0 = time.perf_counter()
            cache = self.fwd.new_cache()
            if self.prefix_ids:
                ids = torch.tensor([self.prefix_ids], dtype=torch.long, device=self.device)
                self.fwd.hidden(ids, cache)
            self._prefix_cache = cache
            self.stats.prefix_s = time.perf_counter() - t0
            self.stats.flops += forward_flops(self.lm.model.config, len(self.prefix_ids),
                                              (len(self.prefix_ids) + 1) / 2, 0)
        return self._prefix_cache

    def trunk_cache(self, trunk: tuple[int, ...]) -> Any:
        """Cache of prefix ⊕ trunk (the latest trunk is kept; the prefix cache is forked)."""
        if self._trunk is not None and self._trunk[0] == trunk:
            return self._trunk[1]
        t0 = time.perf_counter()
        cache = self.fwd.fork(self.prefix_cache)
        ids = torch.tensor([list(trunk)], dtype=torch.long, device=self.device)
        self.fwd.hidden(ids, cache)
        self._trunk = (trunk, cache)
        self.stats.seconds += time.perf_counter() - t0
        self.stats.trunk_tokens += len(trunk)
        self.stats.flops += forward_flops(self.lm.model.config, len(trunk),
                                          len(self.prefix_ids) + (len(trunk) + 1) / 2, 0)
        return cache

    @staticmethod
    def shared_len(k: tuple[int, ...], trunk: Optional[tuple[int, ...]]) -> int:
        """Tokens of ``k`` taken from the trunk cache: the common prefix, leaving at least the
        last token of ``k`` to feed (its hidden state predicts the first scored token)."""
        if not trunk:
            return 0
        n = min(len(k) - 1, len(trunk))
        i = 0
        while i < n and k[i] == trunk[i]:
            i += 1
        return i

    # ------------------------------------------------------------------ batching
    def row_bound(self, row_len: int) -> Any:
        """Memory per row of a batch of rows of ``row_len`` tokens (engine.budget, as the
        sampler's and the judges' batches): the KV of the prefix (copied per row) and the row,
        activations for the row, and the head's logits and log-softmax at every scored
        position."""
        from engine.budget import dtype_bytes, forward_bound

        return forward_bound("scoring batch", self.lm.model.config, dtype_bytes(self.lm),
                             positions=len(self.prefix_ids) + row_len, fed=row_len,
                             logit_rows=len(self.target_ids), vocab=self._vocab)

    def batch_size_for(self, row_len: int, usable: Optional[int] = None) -> int:
        """Rows per batch for rows of ``row_len`` tokens: token budget, then what the usable
        memory holds (engine.budget.rows_that_fit; ``usable`` bytes may be passed in to avoid
        re-reading it), then the user cap and any out-of-memory halving."""
        from engine.budget import rows_that_fit, usable_bytes

        row_len = max(1, row_len)
        b = max(1, self.token_budget // row_len)
        b = rows_that_fit(self.row_bound(row_len), b,
                          usable_bytes(self.device) if usable is None else usable)
        if self.batch_cap is not None:
            b = min(b, self.batch_cap)
        if self._halved_cap is not None:
            b = min(b, self._halved_cap)
        return max(1, b)

    @torch.inference_mode()
    def _forward_batch(self, cands: Sequence[Sequence[int]], shared: int = 0,
                       trunk: Optional[tuple[int, ...]] = None) -> list[float]:
        """Summed U ⊕ R log-probabilities (fp64) for one batch of candidates. ``shared`` > 0:
        every candidate starts with ``trunk[:shared]``, taken from the trunk cache."""
        B = len(cands)
        rows = [list(v)[shared:] + self.between_ids + self.target_ids for v in cands]
        lens = [len(r) for r in rows]
        L = max(lens)
        past = len(self.prefix_ids) + shared
        T = len(self.target_ids)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, past + L), dtype=torch.long)
        mask[:, :past] = 1
        for b, r in enumerate(rows):
            ids[b, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[b, past:past + len(r)] = 1
        pos = (torch.arange(L, dtype=torch.long) + past).unsqueeze(0).expand(B, L)
        # the hidden state at index q predicts the token at q + 1; U ⊕ R starts at |V| + |F_suf|
        start = torch.tensor([len(v) - shared + len(self.between_ids) - 1 for v in cands],
                             dtype=torch.long)
        gidx = start.unsqueeze(1) + torch.arange(T, dtype=torch.long).unsqueeze(0)  # (B, T)
        dev = self.device
        base = self.trunk_cache(trunk) if shared else self.prefix_cache
        cache = self.fwd.repeat(self.fwd.fork(base, keep=past), B)
        h = self.fwd.hidden(ids.to(dev), cache, position_ids=pos.to(dev), attention_mask=mask.to(dev))
        H = h.shape[-1]
        sel = h.gather(1, gidx.to(dev).unsqueeze(-1).expand(B, T, H))          # (B, T, H)
        tgt = torch.tensor(self.target_ids, dtype=torch.long, device=dev)
        out = torch.empty(B, dtype=torch.float64)
        step = max(1, HEAD_CHUNK_FLOATS // max(1, T * self._vocab))
        for a in range(0, B, step):
            lp = torch.log_softmax(self.fwd.head(sel[a:a + step]).float(), dim=-1)   # (b, T, V)
            picked = lp.gather(-1, tgt.view(1, T, 1).expand(lp.shape[0], T, 1)).squeeze(-1)
            out[a:a + step] = picked.double().sum(-1).cpu()
        self.stats.batches += 1
        self.stats.tokens += sum(lens)
        self.stats.padded_tokens += B * L
        self.stats.head_positions += B * T
        self.stats.shared_tokens += B * shared
        self.stats.flops += forward_flops(self.lm.model.config, B * L, past + (L + 1) / 2, B * T)
        return out.tolist()

    def finish(self, logp_sum: float, n_candidate: int) -> float:
        """Score from the summed log-probability (length term applied when enabled)."""
        if not self.length_norm:
            return logp_sum
        return logp_sum - length_term(n_candidate, self.n_around)

    def plan(self, todo: list[tuple[int, ...]], sh: dict[tuple[int, ...], int],
             extra: int) -> list[int]:
        """Batch sizes over ``todo`` (in order) minimising the tokens fed: a batch forks at its
        smallest shared prefix and pads to its longest row, so its cost is rows × (longest −
        smallest shared + extra) plus a small per-batch overhead. Exact DP over contiguous
        batches within the size limits and the token budget; O(n · max batch)."""
        from engine.budget import usable_bytes

        n = len(todo)
        usable = usable_bytes(self.device)    # read once per plan
        inf = float("inf")
        best = [0.0] + [inf] * n
        choice = [0] * (n + 1)
        for j in range(1, n + 1):
            lo, mx = 1 << 30, 0
            for b in range(1, j + 1):
                k = todo[j - b]
                lo, mx = min(lo, sh[k]), max(mx, len(k))
                row = mx - lo + extra
                if b > 1 and (row * b > self.token_budget or b > self.batch_size_for(row, usable)):
                    break
                cost = best[j - b] + b * row + BATCH_OVERHEAD_TOKENS
                if cost < best[j]:
                    best[j], choice[j] = cost, b
        sizes = []
        j = n
        while j > 0:
            sizes.append(choice[j])
            j -= choice[j]
        return sizes[::-1]

    # ------------------------------------------------------------------ public
    def score(self, cands: Sequence[Sequence[int]], *, trunk: Optional[Sequence[int]] = None,
              progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None,
              phase: str = "search", metrics: Optional[dict[str, Any]] = None) -> list[float]:
        """Scores of ``cands`` (memo first; the rest in batches ordered by shared prefix with
        ``trunk``, then length). A cancel raises :class:`~engine.progress.Cancelled` between
        batches; scores already computed stay in the memo."""
        keys = [tuple(int(t) for t in v) for v in cands]
        for k in keys:
            if not k:
                raise InputError("an empty tokenization cannot be scored")
        tr = tuple(int(t) for t in trunk) if (trunk and self.share_trunk) else None
        sh = {k: self.shared_len(k, tr) for k in keys if k not in self.memo}
        # most shared first; within the same shared prefix, by remaining length (less padding)
        todo = sorted(sh, key=lambda k: (-sh[k], len(k) - sh[k], k))
        self.stats.memo_hits += len(keys) - len(todo)
        _ = self.prefix_cache
        done = 0
        i = 0
        extra = len(self.between_ids) + len(self.target_ids)
        sizes = self.plan(todo, sh, extra)
        while i < len(todo):
            check(cancel)
            b = sizes.pop(0)
            batch = todo[i:i + b]
            shared = min(sh[k] for k in batch)
            self.stats.batch_size = len(batch)
            t0 = time.perf_counter()
            try:
                sums = self._forward_batch(batch, shared, tr)
            except Exception as e:  # noqa: BLE001 - only out-of-memory is handled here
                if not is_oom(e):
                    raise
                if len(batch) == 1:
                    raise EngineError("out of memory scoring a single candidate",
                                      hint="use a shorter request or response") from e
                self._halved_cap = max(1, len(batch) // 2)
                self.stats.oom_halvings += 1
                sizes = self.plan(todo[i:], sh, extra)
                if getattr(self.device, "type", "") == "cuda":
                    torch.cuda.empty_cache()
                continue
            self.stats.seconds += time.perf_counter() - t0
            self.stats.scored += len(batch)
            for k, s in zip(batch, sums):
                self.memo[k] = self.finish(s, len(k))
            i += len(batch)
            done += len(batch)
            report(progress, phase, done, len(todo), f"scored {done}/{len(todo)} candidates",
                   batch=len(batch), cand_s=round(self.stats.candidates_per_s, 2),
                   tok_s=round(self.stats.tokens_per_s, 1), **(metrics or {}))
        return [self.memo[k] for k in keys]

    def score_one(self, ids: Sequence[int]) -> float:
        return self.score([ids])[0]


# ---------------------------------------------------------------------- reference-style scorer
@torch.inference_mode()
def reference_scores(lm: LoadedModel, prefix_ids: Sequence[int], cands: Sequence[Sequence[int]],
                     between_ids: Sequence[int], target_ids: Sequence[int], *, batch_size: int = 1,
                     length_norm: bool = True, cancel: Optional[CancelToken] = None) -> list[float]:
    """Scores computed the way the reference does: every candidate's full prompt row in the
    batch (no prefix cache) and the full-vocabulary head at every position. Same objective and
    arithmetic (fp32 log-softmax, fp64 sums) as :class:`CandidateScorer`; for tests and the
    benchmark only."""
    fwd = get_forward(lm, exact=True)
    dev = lm.torch_device
    prefix, between, target = list(prefix_ids), list(between_ids), list(target_ids)
    n_around = len(prefix) + len(between) + len(target)
    pad = getattr(lm.tokenizer, "pad_token_id", None)
    pad = int(pad) if pad is not None else 0
    T = len(target)
    out: list[float] = []
    for a in range(0, len(cands), max(1, batch_size)):
        check(cancel)
        batch = [list(v) for v in cands[a:a + max(1, batch_size)]]
        rows = [prefix + v + between + target for v in batch]
        L = max(len(r) for r in rows)
        B = len(rows)
        ids = torch.full((B, L), pad, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, :len(r)] = torch.tensor(r, dtype=torch.long)
            mask[b, :len(r)] = 1
        logits = fwd.logits(ids.to(dev), fwd.new_cache(), attention_mask=mask.to(dev), keep=0)
        lp = torch.log_softmax(logits.float(), dim=-1)                     # (B, L, V)
        for b, v in enumerate(batch):
            s = len(prefix) + len(v) + len(between) - 1
            q = torch.arange(s, s + T, device=dev)
            tgt = torch.tensor(target, dtype=torch.long, device=dev)
            total = float(lp[b, q, tgt].double().sum())
            out.append(total - length_term(len(v), n_around) if length_norm else total)
    return out


# ---------------------------------------------------------------------- work accounting
def forward_flops(cfg: Any, new_tokens: int, past: float, head_positions: int,
                  vocab: Optional[int] = None) -> float:
    """Approximate FLOPs of feeding ``new_tokens`` (each attending to ``past`` earlier positions
    on average, itself included) and computing the LM head at ``head_positions`` states:
    2·(matmul parameters) per token + 4·layers·(heads·head_dim)·context for attention
    + 2·hidden·vocab per head position."""
    H = int(cfg.hidden_size)
    layers = int(cfg.num_hidden_layers)
    heads = int(cfg.num_attention_heads)
    kvh = int(getattr(cfg, "num_key_value_heads", heads) or heads)
    hd = int(getattr(cfg, "head_dim", 0) or 0) or H // heads
    inter = int(getattr(cfg, "intermediate_size", 4 * H))
    V = int(vocab or cfg.vocab_size)
    per_layer = H * heads * hd + 2 * H * kvh * hd + heads * hd * H + 3 * H * inter
    dense = 2 * layers * per_layer * new_tokens
    attn = 4 * layers * heads * hd * past * new_tokens
    head = 2 * H * V * head_positions
    return float(dense + attn + head)
