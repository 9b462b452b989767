"""Tree-search speed: 10 rollouts × 50 new tokens on the bundled model, batched + cache-resumed vs
one rollout at a time re-encoding prompt + path from scratch, measured in the same run.

    .venv/bin/python bench/treesearch.py [--repeats 2] [--rollouts 10] [--horizon 50]

Prints a table and writes bench/results/treesearch.json. Goals (issue 5): batched ≥ 3× the naive
wall time, and ≤ 5 s for the batched run. Both use engine.lm.forward.get_forward, so the lean fast
path is used when it exists (the forward's name is printed). The two strategies build different
trees (EOS lands at different times), so tokens/s is reported next to wall time.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import env_record, write_result  # noqa: E402

PROMPT = "Write a short story about a kitten who wants to reach the moon."
REWARD = "words:kitten,moon"
print = functools.partial(print, flush=True)  # noqa: A001  (progress visible when piped)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rollouts", type=int, default=10)
    ap.add_argument("--horizon", type=int, default=50)
    ap.add_argument("--engine-path", choices=("fast", "standard"), default="fast")
    ap.add_argument("--no-k5", action="store_true", help="skip the informative batch-5 variant")
    ap.add_argument("--out", default="treesearch", help="results file name under bench/results/")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0 = torch's default); 1 avoids oversubscription stalls "
                         "when other jobs load the cores")
    args = ap.parse_args(argv)
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from engine.lm.forward import get_forward
    from engine.lm.model import load_model
    from engine.treesearch.rewards import parse_reward
    from engine.treesearch.search import TreeConfig, run_tree_search

    lm = load_model("default")
    lm.engine_path = args.engine_path
    fwd = get_forward(lm)
    tok = lm.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                     return_dict=False)
    reward = parse_reward(REWARD)
    common = dict(rollouts=args.rollouts, horizon=args.horizon, lam=1.0, temperature=1.0, top_p=0.95,
                  widening=3, mode="search", seed=0)
    variants = {
        "batched": TreeConfig(**common, batch=args.rollouts, reuse_kv=True),
        "naive": TreeConfig(**common, batch=1, reuse_kv=False),
    }
    if not args.no_k5:
        variants["batched_k5"] = TreeConfig(**common, batch=max(1, args.rollouts // 2), reuse_kv=True)
    print(f"model {lm.name} · forward: {fwd.name} · prompt {len(prompt)} tokens · reward {REWARD} · "
          f"torch threads {torch.get_num_threads()}")
    print(f"{args.rollouts} rollouts × ≤{args.horizon} new tokens · repeats {args.repeats} "
          f"(cores shared with other jobs: absolute times are noisy, same-run ratios are the figure)")

    # warm-up: allocator, kernels, tokenizer decode caches
    run_tree_search(lm, prompt, reward, TreeConfig(**{**common, "rollouts": 2, "horizon": 4}, batch=2))

    runs: dict[str, list[dict]] = {k: [] for k in variants}
    for rep in range(args.repeats):
        order = list(variants) if rep % 2 == 0 else list(reversed(variants))
        for name in order:
            res = run_tree_search(lm, prompt, reward, variants[name])
            row = {"wall_s": res.total_s, "generated_tokens": res.generated_tokens,
                   "tok_s": res.generated_tokens / res.total_s, "prefill_tokens": res.prefill_tokens,
                   "batches": res.batches, "padded_batches": res.padded_batches, "nodes": res.nodes,
                   "best_reward": res.best_reward, "stop_reason": res.stop_reason,
                   "kv_bytes": res.kv_bytes, "best_text": res.best_text[:200]}
            runs[name].append(row)
            print(f"  rep {rep + 1} {name:11s} {res.total_s:7.2f} s  {row['tok_s']:6.1f} tok/s  "
                  f"{res.generated_tokens:4d} tokens  best reward {res.best_reward}")

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    summary = {name: {"wall_s_median": med(name, "wall_s"), "tok_s_median": med(name, "tok_s"),
                      "generated_tokens_median": med(name, "generated_tokens")} for name in runs}
    wall_ratio = med("naive", "wall_s") / med("batched", "wall_s")
    tok_ratio = med("batched", "tok_s") / med("naive", "tok_s")
    paired = [n["wall_s"] / b["wall_s"] for b, n in zip(runs["batched"], runs["naive"])]
    goals = {"speedup_ge_3x": wall_ratio >= 3.0, "batched_le_5s": med("batched", "wall_s") <= 5.0}
    print()
    print(f"{'variant':12s} {'wall s':>8s} {'tok/s':>8s} {'tokens':>7s}")
    for name, s in summary.items():
        print(f"{name:12s} {s['wall_s_median']:8.2f} {s['tok_s_median']:8.1f} {s['generated_tokens_median']:7.0f}")
    print(f"\nbatched vs naive: {wall_ratio:.2f}× wall time (paired per repeat: "
          f"{', '.join(f'{x:.2f}' for x in paired)}), {tok_ratio:.2f}× tokens/s")
    print(f"goal ≥ 3× naive: {'met' if goals['speedup_ge_3x'] else 'NOT met'} · "
          f"goal batched ≤ 5 s: {'met' if goals['batched_le_5s'] else 'NOT met'} "
          f"({med('batched', 'wall_s'):.2f} s, forward {fwd.name})")
    out = write_result(args.out, {
        "env": env_record(), "torch_threads": torch.get_num_threads(), "model": lm.name, "forward": fwd.name, "prompt": PROMPT,
        "prompt_tokens": len(prompt), "reward": REWARD, "config": common,
        "variants": {k: v.__dict__ for k, v in variants.items()}, "runs": runs, "summary": summary,
        "wall_ratio_naive_over_batched": wall_ratio, "tok_s_ratio_batched_over_naive": tok_ratio,
        "paired_wall_ratios": paired, "goals": goals})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
