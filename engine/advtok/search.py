"""AdvTok: search the tokenizations of a request for the one that makes a target response most
likely (Geh et al., "Adversarial Tokenization", ACL 2025; docs/algorithms.md §2).

The search is greedy (or stochastic) local search over the tokenization diagram: from X, score
the neighbours at distance 2 (optionally merges at distance 1 and sampled distance-4 ones) plus
X itself, move to the best, stop at a fixed point / after a few flat iterations / after
``iters``. Scoring goes through :class:`~engine.advtok.score.CandidateScorer` (prefix cached
once, memoised, batched); the diagram work is milliseconds; the neighbourhood is built in
``neighbours.py``. Afterwards N responses are sampled with the adversarial and with the canonical
tokenization, same template and system prompt (``samples.py``).
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from engine.advtok.config import DEFAULT_SYSTEM, INITS, AttackConfig  # noqa: F401  (re-exported)
from engine.advtok.neighbours import candidates, levenshtein
from engine.advtok.samples import sample_pair
from engine.advtok.score import CandidateScorer
from engine.errors import ContextOverflow, InputError
from engine.progress import Cancelled, CancelToken, ProgressFn, check, report

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

REL_IMPROVEMENT = 1e-6


@dataclass
class IterationTrace:
    """One search iteration (docs/algorithms.md §2.2)."""

    it: int
    best: float                 # best score so far
    current: float              # score of the X chosen this iteration
    delta: float                # best − previous best
    candidates: int             # |C| before subsampling (X excluded)
    kept: int                   # |C| after subsampling (X excluded)
    scored: int                 # newly forwarded this iteration
    memo_hits: int
    edge_distance: int          # |E(X) \ E(canonical)|
    levenshtein: int            # token-id edit distance to canonical
    tokens: int                 # |X|
    elapsed_s: float
    cand_s: float               # candidates scored per second this iteration


@dataclass
class AttackResult:
    """Outcome of a run; always well-formed (a cancel returns the best found so far)."""

    request: str
    response: str
    system: Optional[str]
    system_used: bool
    request_text: str           # what is tokenized: template lead + request + trail
    canonical_ids: list[int]
    canonical_tokens: list[str]
    canonical_score: Optional[float]
    best_ids: list[int]
    best_tokens: list[str]
    best_score: Optional[float]
    init_ids: list[int]
    stop_reason: str
    iterations: int
    curve: list[float] = field(default_factory=list)     # best score after each iteration
    trace: list[IterationTrace] = field(default_factory=list)
    count: str = "0"           # number of tokenizations (decimal string: exceeds 2^64)
    edge_distance: int = 0
    levenshtein: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    candidates_scored: int = 0
    memo_hits: int = 0
    candidates_per_s: float = 0.0
    adversarial_samples: list[dict[str, Any]] = field(default_factory=list)
    canonical_samples: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def improvement(self) -> Optional[float]:
        if self.best_score is None or self.canonical_score is None:
            return None
        return self.best_score - self.canonical_score

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["improvement"] = self.improvement
        return d


def run_attack(lm: LoadedModel, cfg: AttackConfig, *, progress: Optional[ProgressFn] = None,
               cancel: Optional[CancelToken] = None, vocab: Any = None) -> AttackResult:
    """Run one AdvTok search (and the side-by-side samples when ``cfg.samples`` > 0).

    Phases reported: vocab, mdd, search (every batch and iteration), generate. A cancel at any
    point returns the best tokenization found so far with stop_reason "cancelled"."""
    cfg.validate()
    t_start = time.perf_counter()
    prompt = _Prompt.of(lm, cfg)
    res = AttackResult(
        request=cfg.request, response=cfg.response, system=cfg.system,
        system_used=prompt.chunks.system_used, request_text=prompt.text,
        canonical_ids=list(prompt.canonical), canonical_tokens=[], canonical_score=None,
        best_ids=list(prompt.canonical), best_tokens=[], best_score=None,
        init_ids=list(prompt.canonical), stop_reason="cancelled", iterations=0,
        warnings=list(prompt.warnings), config=_config_dict(cfg))
    run = _Search(lm, cfg, prompt, res, progress, cancel)
    try:
        check(cancel)
        run.diagram(vocab)
        run.search()
    except Cancelled:
        res.stop_reason = "cancelled"
    _finish(res, run.mdd, run.scorer, run.canonical, run.timings, lm.tokenizer)
    if cfg.samples and res.stop_reason != "cancelled":
        run.samples()
    run.timings["total_s"] = time.perf_counter() - t_start
    res.timings = {k: round(v, 4) for k, v in run.timings.items()}
    return res


@dataclass
class _Prompt:
    """What one run searches and scores: the request as the template frames it, its canonical
    tokens, and the fixed ids before (prefix), between and after (targets) the searched span."""

    chunks: Any
    text: str
    canonical: list[int]
    prefix: list[int]
    between: list[int]
    targets: list[int]
    warnings: list[str]

    @classmethod
    def of(cls, lm: LoadedModel, cfg: AttackConfig) -> "_Prompt":
        """InputError for a model without a chat template (unless allowed) or an empty target;
        ContextOverflow when the longest tokenization (one token per byte) cannot fit."""
        from engine.lm.templates import encode_user_text, split_template

        tok = lm.tokenizer
        chunks = split_template(tok, cfg.system)
        if not chunks.has_template and not cfg.allow_plain_template:
            raise InputError("this model has no chat template; AdvTok scores a chat prompt",
                             hint="allow plain 'User:/Assistant:' concatenation with --plain-template")
        text = chunks.request_text(cfg.request)
        canonical = encode_user_text(tok, text)
        chunks.verify(cfg.request, canonical)
        response_ids = chunks.response_ids(cfg.response)
        if not response_ids:
            raise InputError("the target response encodes to no tokens")
        p = cls(chunks, text, list(canonical), chunks.prefix_ids + list(cfg.frozen_prefix_ids),
                list(cfg.frozen_suffix_ids), chunks.tail_ids + response_ids,
                [chunks.warning] if chunks.warning else [])
        worst = len(p.prefix) + len(text.encode("utf-8")) + len(p.between) + len(p.targets)
        if worst > lm.context_length:
            raise ContextOverflow(f"the longest tokenization of the prompt is {worst} tokens, over "
                                  f"the context length {lm.context_length}",
                                  hint="shorten the request or the response")
        if cfg.samples:  # samples decode in memory-sized batches; one row must fit at least
            from engine.budget import batch_bound

            fed = len(p.prefix) + len(text.encode("utf-8")) + len(p.between) + len(chunks.tail_ids)
            batch_bound(lm, "samples", fed + cfg.sample_max_new_tokens).check(1)
        return p


class _Search:
    """One run's working state: the diagram, the scorer, the current and best tokenization."""

    def __init__(self, lm: LoadedModel, cfg: AttackConfig, prompt: _Prompt, res: AttackResult,
                 progress: Optional[ProgressFn], cancel: Optional[CancelToken]) -> None:
        self.lm, self.cfg, self.prompt, self.res = lm, cfg, prompt, res
        self.progress, self.cancel = progress, cancel
        self.rng = random.Random(cfg.seed)
        self.timings: dict[str, float] = {}
        self.canonical = list(prompt.canonical)
        self.mdd: Any = None
        self.scorer: Optional[CandidateScorer] = None
        self.x: list[int] = []

    def diagram(self, vocab: Any) -> None:
        """The vocabulary, the request's tokenization diagram and the starting tokenization."""
        from engine.advtok.mdd import MDD
        from engine.advtok.vocab import load_vocab

        cfg, res, progress, tok = self.cfg, self.res, self.progress, self.lm.tokenizer
        t = time.perf_counter()
        if vocab is not None:
            report(progress, "vocab", len(vocab), len(vocab), "vocabulary already loaded",
                   hash=vocab.hash, cache="given")
        else:
            vocab = load_vocab(tok, progress=progress, cancel=self.cancel)
        if vocab.cache_note:
            res.warnings.append(vocab.cache_note)
        self.timings["vocab_s"] = time.perf_counter() - t
        t = time.perf_counter()
        mdd = self.mdd = MDD(vocab, self.prompt.text, progress=progress, cancel=self.cancel)
        self.canonical = mdd.canonical(tok)
        self.timings["mdd_s"] = time.perf_counter() - t
        res.count = str(mdd.count())
        report(progress, "mdd", mdd.n, mdd.n, "diagram ready", edges=mdd.n_edges, count=res.count,
               canonical_len=len(self.canonical), shortest_len=len(mdd.shortest()),
               canonical_is_path=True)
        if cfg.init == "canonical":
            x = list(self.canonical)
        elif cfg.init == "random":
            x = mdd.sample(self.rng)
        else:
            x = [int(t) for t in cfg.given_ids or []]
            if not mdd.contains(x):
                raise InputError("the given token ids do not spell the request exactly")
        self.x = x
        res.init_ids = list(x)
        res.best_ids = list(x)

    def search(self) -> None:
        """Score the start, then move to the best (or a drawn) neighbour until a fixed point, a
        few flat iterations or ``iters``; the result holds the best after every iteration."""
        cfg, res, p = self.cfg, self.res, self.prompt
        scorer = self.scorer = CandidateScorer(
            self.lm, p.prefix, p.between, p.targets, length_norm=cfg.length_norm,
            token_budget=cfg.token_budget, batch_cap=cfg.batch_cap, share_trunk=cfg.share_trunk)
        s0 = scorer.score([self.canonical, self.x], progress=self.progress, cancel=self.cancel)
        self.timings["prefix_s"] = scorer.stats.prefix_s
        res.canonical_score = s0[0]
        res.best_ids, res.best_score = list(self.x), s0[1]
        e_can = self.mdd.edge_set(self.canonical)
        flat = 0
        stop = "iterations"
        t_search = time.perf_counter()
        for it in range(1, cfg.iters + 1):
            check(self.cancel)
            x_new, improved, full = self.iteration(it, e_can, t_search)
            flat = 0 if improved else flat + 1
            if full and not cfg.stochastic and x_new == self.x:
                stop = "local_optimum"
                break
            if (not full or cfg.stochastic) and flat >= cfg.patience:
                stop = "no_improvement"
                break
            self.x = list(x_new)
        res.stop_reason = stop
        self.timings["search_s"] = time.perf_counter() - t_search
        report(self.progress, "search", res.iterations, cfg.iters, f"search done ({stop})",
               best=round(res.best_score, 4), stop_reason=stop)

    def iteration(self, it: int, e_can: set, t_search: float) -> tuple[list[int], bool, bool]:
        """Score X's neighbourhood and choose the next X. Returns (next X, whether the best
        improved, whether the neighbourhood was complete)."""
        cfg, res, mdd, scorer, x = self.cfg, self.res, self.mdd, self.scorer, self.x
        assert scorer is not None
        best_x, best = list(res.best_ids), float(res.best_score)
        t_it = time.perf_counter()
        scored0, hits0, sec0 = scorer.stats.scored, scorer.stats.memo_hits, scorer.stats.seconds
        cand, before, full = candidates(mdd, x, cfg, self.rng)
        pool = [x] + [v for v in cand if v != x]
        metrics = {"iteration": it, "iterations": cfg.iters, "best": round(best, 4),
                   "candidates": len(pool), "edge_distance": len(mdd.edge_set(best_x) - e_can)}
        scores = scorer.score(pool, trunk=x, progress=self.progress, cancel=self.cancel,
                              metrics=metrics)
        if cfg.stochastic:
            m = max(scores)
            k = _weighted_index(self.rng, [math.exp((s - m) / cfg.temperature) for s in scores])
        else:
            k = max(range(len(pool)), key=lambda i: (scores[i], i == 0))
        x_new, s_new = pool[k], scores[k]
        prev_best = best
        if s_new > best:
            best_x, best = list(x_new), s_new
        edge_d = len(mdd.edge_set(best_x) - e_can)
        lev = levenshtein(best_x, self.canonical)
        sec = scorer.stats.seconds - sec0
        new = scorer.stats.scored - scored0
        tr = IterationTrace(
            it=it, best=best, current=s_new, delta=best - prev_best, candidates=before,
            kept=len(cand), scored=new, memo_hits=scorer.stats.memo_hits - hits0,
            edge_distance=edge_d, levenshtein=lev, tokens=len(best_x),
            elapsed_s=time.perf_counter() - t_it, cand_s=new / sec if sec > 0 else 0.0)
        res.trace.append(tr)
        res.curve.append(best)
        res.iterations = it
        res.best_ids, res.best_score = list(best_x), best
        report(self.progress, "search", it, cfg.iters, f"iteration {it}/{cfg.iters}",
               iteration=it, best=round(best, 4), delta=round(tr.delta, 6),
               candidates=before, kept=len(cand), scored=new, memo_hits=tr.memo_hits,
               edge_distance=edge_d, levenshtein=lev, tokens=len(best_x),
               cand_s=round(tr.cand_s, 2), tok_s=round(scorer.stats.tokens_per_s, 1),
               elapsed_s=round(time.perf_counter() - t_search, 2))
        improved = best - prev_best > REL_IMPROVEMENT * max(1.0, abs(prev_best))
        return x_new, improved, full

    def samples(self) -> None:
        """N answers with the adversarial and with the canonical tokenization, side by side."""
        res = self.res
        t = time.perf_counter()
        adv, can = sample_pair(self.lm, self.prompt.chunks, res.best_ids, self.canonical, self.cfg,
                               prefix_cache=self.scorer.prefix_cache if self.scorer else None,
                               progress=self.progress, cancel=self.cancel)
        res.adversarial_samples, res.canonical_samples = adv, can
        self.timings["generate_s"] = time.perf_counter() - t
        if any(s["stop_reason"] == "cancelled" for s in adv + can):
            res.warnings.append("sampling was cancelled: samples are partial")


def _weighted_index(rng: random.Random, w: list[float]) -> int:
    r = rng.random() * sum(w)
    for i, x in enumerate(w):
        r -= x
        if r < 0:
            return i
    return len(w) - 1


def _finish(res: AttackResult, mdd: Any, scorer: Optional[CandidateScorer], canonical: list[int],
            timings: dict[str, float], tok: Any) -> None:
    """Fill the token strings, distances and throughput figures (also after a cancel)."""
    res.canonical_ids = list(canonical)

    def strs(ids: list[int]) -> list[str]:
        if mdd is not None:
            return mdd.tokens(ids)
        return [tok.decode([t]) for t in ids]

    res.canonical_tokens = strs(res.canonical_ids)
    res.best_tokens = strs(res.best_ids)
    if mdd is not None:
        res.edge_distance = len(mdd.edge_set(res.best_ids) - mdd.edge_set(canonical))
    res.levenshtein = levenshtein(res.best_ids, canonical)
    if scorer is not None:
        res.candidates_scored = scorer.stats.scored
        res.memo_hits = scorer.stats.memo_hits
        res.candidates_per_s = round(scorer.stats.candidates_per_s, 3)
        timings["scoring_s"] = scorer.stats.seconds
        if res.best_score is None and tuple(res.best_ids) in scorer.memo:
            res.best_score = scorer.memo[tuple(res.best_ids)]
        if res.canonical_score is None and tuple(canonical) in scorer.memo:
            res.canonical_score = scorer.memo[tuple(canonical)]


def _config_dict(cfg: AttackConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d.pop("request", None)
    d.pop("response", None)
    return d
