"""Quality of the reduced-precision decode path (``--engine-path int8``) against the exact fp32
lean path, over the dashboard suite: per query, the exact path's greedy continuation is decoded,
then both paths are teacher-forced on it token by token (as in decoding) and compared.

    .venv/bin/python bench/int8_quality.py [--suite core-v1] [--tokens 48] [--limit N]

Reports mean KL(fp32 || int8) in nats/token, top-1 agreement (share of positions where both
paths pick the same next token), and where the int8 path's own greedy output first diverges from
the exact one. Prints a table; writes bench/results/int8_quality.json.
"""
from __future__ import annotations

import argparse
from typing import Any

from _util import env_record, write_result

import torch

from engine.bench.measure import first_divergence, kl_stats
from engine.bench.suite import load_suite
from engine.bench.methods.base import Method
from engine.lm.fastpath import make_lean_forward
from engine.lm.model import load_model
from engine.lm.quantized import LABEL, make_int8_forward


def teacher_forced(fwd: Any, prompt: list[int], targets: list[int]) -> torch.Tensor:
    """(T, V) log-probs of each target position, the targets fed one token at a time."""
    cache = fwd.new_cache()
    rows = [fwd.logits(torch.tensor([prompt]), cache)[0, -1]]
    for t in targets[:-1]:
        rows.append(fwd.logits(torch.tensor([[t]]), cache)[0, -1])
    return torch.log_softmax(torch.stack(rows).float(), dim=-1)


def greedy(fwd: Any, prompt: list[int], n: int, eos: set[int]) -> list[int]:
    cache = fwd.new_cache()
    logits = fwd.logits(torch.tensor([prompt]), cache)[0, -1]
    out: list[int] = []
    while len(out) < n:
        tok = int(logits.argmax())
        if tok in eos:
            break
        out.append(tok)
        logits = fwd.logits(torch.tensor([[tok]]), cache)[0, -1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="core-v1")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--limit", type=int, default=0, help="first N queries only (0: all)")
    args = ap.parse_args()
    lm = load_model("default")
    exact = make_lean_forward(lm.model)
    q8 = make_int8_forward(lm.model)
    if exact is None or q8 is None:
        raise SystemExit("int8 path unavailable for this model / torch build")
    suite = load_suite(args.suite)
    queries = [q for q in suite.queries if q.kind != "prose"]
    if args.limit:
        queries = queries[:args.limit]
    eos = set(lm.eos_ids)
    base = Method()
    rows = []
    all_kl, agree, total = [], 0, 0
    with torch.inference_mode():
        for q in queries:
            prompt = base.render_prompt(lm, q)
            ref = greedy(exact, prompt, args.tokens, eos)
            if not ref:
                continue
            lp_ref = teacher_forced(exact, prompt, ref)
            lp_q = teacher_forced(q8, prompt, ref)
            kl_mean, kl_max = kl_stats(lp_ref, lp_q)
            kl = (lp_ref.exp() * (lp_ref - lp_q)).sum(-1).clamp_min(0.0)
            all_kl.append(kl)
            same = int((lp_ref.argmax(-1) == lp_q.argmax(-1)).sum())
            agree += same
            total += len(ref)
            mine = greedy(q8, prompt, args.tokens, eos)
            div = first_divergence(ref, mine)
            rows.append({"id": q.id, "kind": q.kind, "prompt_tokens": len(prompt), "tokens": len(ref),
                         "kl_mean": kl_mean, "kl_max": kl_max, "top1_agree": same / len(ref),
                         "first_divergence": div})
            print(f"{q.id:14s} {len(prompt):5d} prompt tok  KL {kl_mean:.5f} (max {kl_max:.4f})  "
                  f"top-1 {same}/{len(ref)}  greedy diverges at {div}")
    kl_all = torch.cat(all_kl)
    diverged = [r for r in rows if r["first_divergence"] is not None]
    summary = {"label": LABEL, "queries": len(rows), "positions": total,
               "kl_mean_nats_per_token": float(kl_all.mean()), "kl_p95": float(kl_all.quantile(0.95)),
               "kl_max": float(kl_all.max()), "top1_agreement": agree / total,
               "greedy_identical_queries": len(rows) - len(diverged),
               "first_divergence_median": (sorted(r["first_divergence"] for r in diverged)[len(diverged) // 2]
                                           if diverged else None),
               "int8_bytes": q8.quantized_bytes()}
    print(f"\n{LABEL} vs fp32 lean, {summary['queries']} queries, {total} positions: "
          f"KL {summary['kl_mean_nats_per_token']:.5f} nats/token (p95 {summary['kl_p95']:.5f}), "
          f"top-1 agreement {100 * summary['top1_agreement']:.1f} %, greedy identical in "
          f"{summary['greedy_identical_queries']}/{summary['queries']} queries")
    print("wrote", write_result("int8_quality", {"env": env_record(), "args": vars(args),
                                                  "summary": summary, "queries": rows}))


if __name__ == "__main__":
    main()
