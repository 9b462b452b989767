"""AdvTok benchmark (issue 4): vocabulary build/load, diagram build + count, the batched
prefix-cached scorer against the reference-style scorer, and wall time per search iteration.

    .venv/bin/python bench/advtok.py [--candidates 0] [--batch 8] [--repeats 3]
                                     [--iters 20] [--search-budget 240]

Prints a table and writes bench/results/advtok.json. The scorers (reference-style; prefix cache +
sliced head; the same plus forking the current X's cache at each candidate's first edit) run
alternately on the same candidates with the same batch cap (so background load hits all alike)
and the ratios are taken within this run. GFLOP figures come from an analytic count of the work each strategy does
(engine.advtok.score.forward_flops), divided by the measured time for GFLOP/s.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

from _util import env_record, median_iqr, write_result

from engine.advtok.search import DEFAULT_SYSTEM, AttackConfig, run_attack
from engine.advtok.score import CandidateScorer, forward_flops, reference_scores
from engine.lm.forward import get_forward
from engine.advtok.mdd import MDD
from engine.lm.model import load_model
from engine.progress import CancelToken
from engine.lm.templates import split_template
from engine.advtok.vocab import build_vocab, load_vocab

DIAGRAM_REQUESTS = [
    "penguin",
    "Compose an email",
    "The quick brown fox jumps over the lazy dog.",
    "Write a short tutorial on how to bake sourdough bread at home, step by step.",
    "Explain, in plain words, how a refrigerator keeps food cold and why the back of it gets warm.",
    "naïve café au lait, 中文 and 🦜 parrots",
]
SCORE_REQUEST = "Write a short tutorial on how to bake sourdough bread at home, step by step."
SCORE_RESPONSE = "Sure, here is a tutorial for baking sourdough bread"
SEARCH_REQUEST = SCORE_REQUEST


def bench_vocab(tok, repeats: int) -> dict:
    builds = []
    for _ in range(repeats):
        t = time.perf_counter()
        vb = build_vocab(tok)
        builds.append(time.perf_counter() - t)
    load_vocab(tok)  # make sure the cache file exists
    loads = []
    for _ in range(repeats):
        t = time.perf_counter()
        lv = load_vocab(tok)
        loads.append(time.perf_counter() - t)
        assert lv.from_cache
    return {"tokens": vb.n_tokens, "kind": vb.kind, "longest_bytes": vb.max_len,
            "build_s": median_iqr(builds)[0], "build_runs_s": builds,
            "load_s": median_iqr(loads)[0], "load_runs_s": loads}


def bench_large_vocab(repeats: int, n: int = 128_000) -> dict:
    """Build time for a vocabulary the size of Llama-3's / Qwen's (synthetic: no downloads)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tokbuild import byte_bpe_tokenizer

    tok = byte_bpe_tokenizer(n)
    builds = []
    for _ in range(repeats):
        t = time.perf_counter()
        vb = build_vocab(tok)
        builds.append(time.perf_counter() - t)
    return {"tokens": vb.n_tokens, "kind": vb.kind, "build_s": median_iqr(builds)[0],
            "build_runs_s": builds}


def bench_diagrams(vocab, tok, repeats: int) -> list[dict]:
    rows = []
    for text in DIAGRAM_REQUESTS:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            m = MDD(vocab, text)
            c = m.count()
            times.append(time.perf_counter() - t)
        canon = m.canonical(tok)
        rows.append({"text": text, "chars": len(text), "bytes": m.n, "edges": m.n_edges,
                     "count": str(c), "canonical_tokens": len(canon),
                     "neighbours_d2": m.count_at(canon, 2),
                     "build_ms": 1000 * median_iqr(times)[0]})
    return rows


def _batches(cands, b):
    return [cands[i:i + b] for i in range(0, len(cands), b)]


def reference_flops(cfg, prefix: int, cands, between: int, targets: int, b: int) -> float:
    """FLOPs of the reference-style scorer on ``cands`` in batches of ``b`` (full rows, head at
    every position)."""
    total = 0.0
    for batch in _batches(cands, b):
        B = len(batch)
        Lf = prefix + max(len(v) for v in batch) + between + targets
        total += forward_flops(cfg, B * Lf, (Lf + 1) / 2, B * Lf)
    return total


def bench_scorer(lm, vocab, n_cands: int, batch: int, repeats: int) -> dict:
    """Reference-style vs prefix cache + sliced head vs that + trunk sharing, on the same
    length-sorted candidates with the same batch cap, alternating (order rotated per repeat)."""
    tok = lm.tokenizer
    ch = split_template(tok, DEFAULT_SYSTEM)
    m = MDD(vocab, ch.request_text(SCORE_REQUEST))
    x = m.canonical(tok)
    pool = [x] + m.neighbours(x, 2)
    # one search iteration's work: X and its distance-2 neighbours (a seeded subset if asked)
    chosen = pool if not n_cands or n_cands >= len(pool) else [x] + random.Random(0).sample(pool[1:], n_cands - 1)
    cands = sorted(chosen, key=lambda v: (len(v), v))   # same order for every scorer
    targets = ch.tail_ids + ch.response_ids(SCORE_RESPONSE)
    prefix = ch.prefix_ids
    cfg = lm.model.config
    times: dict[str, list[float]] = {"reference": [], "prefix": [], "trunk": []}
    scores: dict[str, list[float]] = {}
    flops: dict[str, float] = {"reference": reference_flops(cfg, len(prefix), cands, 0, len(targets), batch)}
    stats: dict[str, dict] = {}
    prefix_t: list[float] = []
    # warm-up (first calls allocate)
    CandidateScorer(lm, prefix, [], targets, batch_cap=batch).score(cands[:2], trunk=x)
    reference_scores(lm, prefix, cands[:2], [], targets, batch_size=2)

    def run(name: str) -> None:
        if name == "reference":
            t = time.perf_counter()
            scores[name] = reference_scores(lm, prefix, cands, [], targets, batch_size=batch)
            times[name].append(time.perf_counter() - t)
            return
        sc = CandidateScorer(lm, prefix, [], targets, batch_cap=batch, token_budget=10**9,
                             share_trunk=(name == "trunk"))
        _ = sc.prefix_cache
        prefix_t.append(sc.stats.prefix_s)
        f0 = sc.stats.flops
        t = time.perf_counter()
        scores[name] = sc.score(cands, trunk=x)
        times[name].append(time.perf_counter() - t)
        flops[name] = sc.stats.flops - f0
        stats[name] = {"batches": sc.stats.batches, "padded_tokens": sc.stats.padded_tokens,
                       "shared_tokens": sc.stats.shared_tokens, "trunk_tokens": sc.stats.trunk_tokens}

    order = ["reference", "prefix", "trunk"]
    for r in range(repeats):
        for name in order[r % 3:] + order[:r % 3]:
            run(name)
    n = len(cands)
    ref = scores["reference"]
    best_ref = max(range(n), key=lambda i: ref[i])
    rank_ref = sorted(range(n), key=lambda i: -ref[i])
    out: dict = {
        "request": SCORE_REQUEST, "request_chars": len(SCORE_REQUEST), "response": SCORE_RESPONSE,
        "forward": get_forward(lm).name, "candidates": n, "neighbours_d2_total": len(pool) - 1,
        "batch_size": batch, "prefix_tokens": len(prefix), "scored_tokens": len(targets),
        "candidate_tokens_mean": statistics.mean(len(v) for v in cands),
        "prefix_prefill_s": statistics.median(prefix_t), "repeats": repeats, "strategies": {},
    }
    for name in order:
        ts = times[name]
        med, best = statistics.median(ts), min(ts)
        sc = scores[name]
        d = max(abs(a - b) for a, b in zip(sc, ref))
        out["strategies"][name] = {
            "runs_s": ts, "median_s": med, "min_s": best, "cand_per_s": n / med,
            "gflop_per_cand": flops[name] / n / 1e9, "gflop_s": flops[name] / med / 1e9,
            "speedup_median": statistics.median(times["reference"]) / med,
            "speedup_min": min(times["reference"]) / best,
            "max_abs_delta_vs_reference": d, "within_1e-4": d < 1e-4,
            "same_choice": max(range(n), key=lambda i: sc[i]) == best_ref,
            "same_ranking": sorted(range(n), key=lambda i: -sc[i]) == rank_ref,
            **stats.get(name, {}),
        }
    return out


def bench_search(lm, vocab, iters: int, budget_s: float) -> dict:
    token = CancelToken()
    t0 = time.perf_counter()
    its: list[float] = []
    last = [t0]

    def progress(p):
        if p.phase == "search" and "kept" in p.metrics:
            now = time.perf_counter()
            its.append(now - last[0])
            last[0] = now
            print(f"  search it {p.metrics['iteration']:>2}: best {p.metrics['best']:.4f} "
                  f"cands {p.metrics['kept']} ({p.metrics['scored']} new) "
                  f"{its[-1]:.1f} s", flush=True)
        if time.perf_counter() - t0 > budget_s:
            token.cancel("time budget")

    cfg = AttackConfig(request=SEARCH_REQUEST, response=SCORE_RESPONSE, iters=iters, samples=0)
    res = run_attack(lm, cfg, progress=progress, cancel=token, vocab=vocab)
    per_it = [t.elapsed_s for t in res.trace]
    return {"request": SEARCH_REQUEST, "iters_asked": iters, "iterations": res.iterations,
            "stop_reason": res.stop_reason, "time_budget_s": budget_s,
            "s_per_iteration_median": statistics.median(per_it) if per_it else None,
            "s_per_iteration_mean": statistics.mean(per_it) if per_it else None,
            "per_iteration_s": per_it,
            "candidates_per_iteration_mean": statistics.mean(t.kept + 1 for t in res.trace) if res.trace else None,
            "new_per_iteration_mean": statistics.mean(t.scored for t in res.trace) if res.trace else None,
            "memo_hits": res.memo_hits, "candidates_per_s": res.candidates_per_s,
            "canonical_score": res.canonical_score, "best_score": res.best_score,
            "canonical_tokens": res.canonical_tokens, "best_tokens": res.best_tokens,
            "prefix_s": res.timings.get("prefix_s"), "total_s": res.timings.get("total_s")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=0,
                    help="score this many of X's neighbours (default 0: all, one iteration's work)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--search-budget", type=float, default=240.0,
                    help="stop the search benchmark after this many seconds (cancel)")
    ap.add_argument("--skip-search", action="store_true")
    args = ap.parse_args()

    lm = load_model("default")
    tok = lm.tokenizer
    out: dict = {"env": env_record(), "model": lm.describe()}
    print(f"model {lm.describe()} · load average {out['env']['loadavg']}", flush=True)

    v = bench_vocab(tok, 3)
    out["vocab"] = v
    print(f"vocabulary: {v['tokens']} tokens ({v['kind']}), build {v['build_s']:.3f} s, "
          f"cached load {v['load_s']:.3f} s   [goal < 1 s]", flush=True)

    big = bench_large_vocab(3)
    out["vocab_128k"] = big
    print(f"vocabulary, synthetic 128K byte-level BPE (Llama-3/Qwen size): build {big['build_s']:.3f} s "
          f"for {big['tokens']} tokens   [goal < 1 s]", flush=True)

    vocab = load_vocab(tok)
    d = bench_diagrams(vocab, tok, 20)
    out["diagrams"] = d
    print(f"\n{'request':<48} {'chars':>5} {'bytes':>5} {'edges':>5} {'build ms':>8}  tokenizations")
    for r in d:
        t = r["text"] if len(r["text"]) <= 46 else r["text"][:43] + "..."
        print(f"{t!s:<48} {r['chars']:>5} {r['bytes']:>5} {r['edges']:>5} {r['build_ms']:>8.2f}  {r['count']}")
    print("  [goal: diagram < 10 ms for a 90-character request]", flush=True)

    print(f"\nscorer: X + {args.candidates or 'all its'} distance-2 neighbours, batch {args.batch}, "
          f"{args.repeats} alternating repeats…",
          flush=True)
    s = bench_scorer(lm, vocab, args.candidates, args.batch, args.repeats)
    out["scorer"] = s
    labels = {"reference": "reference-style (full rows + head)",
              "prefix": "prefix cache + sliced head", "trunk": "  + fork X at first edit"}
    print(f"{'strategy':<36} {'median s':>8} {'cand/s':>7} {'GFLOP/cand':>10} {'GFLOP/s':>8} "
          f"{'speedup':>8} {'(min)':>6} {'max|Δ|':>9} same-choice")
    for name, r in s["strategies"].items():
        print(f"{labels[name]:<36} {r['median_s']:>8.2f} {r['cand_per_s']:>7.2f} "
              f"{r['gflop_per_cand']:>10.2f} {r['gflop_s']:>8.2f} {r['speedup_median']:>7.2f}× "
              f"{r['speedup_min']:>5.2f}× {r['max_abs_delta_vs_reference']:>9.2e} {r['same_choice']}")
    print(f"one-time prefix prefill {s['prefix_prefill_s']:.2f} s (once per run, not per batch)   "
          f"[goal ≥ 2× with |Δ| < 1e-4 and identical choices]", flush=True)

    if not args.skip_search:
        print(f"\nsearch: {args.iters} iterations on {len(SEARCH_REQUEST)} chars "
              f"(cancelled after {args.search_budget:.0f} s)…", flush=True)
        r = bench_search(lm, vocab, args.iters, args.search_budget)
        out["search"] = r
        spi = r["s_per_iteration_median"]
        print(f"search: {r['iterations']} iterations, stop {r['stop_reason']}, "
              f"{spi if spi is None else round(spi, 2)} s/iteration (median), "
              f"{r['candidates_per_iteration_mean']} candidates/iteration, "
              f"{r['candidates_per_s']} cand/s, score {r['canonical_score']:.4f} → {r['best_score']:.4f}")
    out["env_end"] = {"loadavg": env_record()["loadavg"]}
    p = write_result("advtok", out)
    print(f"\nwrote {p}  (machine shared with other jobs: absolute times are noisy, ratios are "
          f"measured in the same run)")


if __name__ == "__main__":
    main()
