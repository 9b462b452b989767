"""Token explorer benchmark (issue 13): what forking the KV cache buys when the user forces a
token at position p of an n-token answer, and what showing alternatives costs during decoding.

    .venv/bin/python bench/branching.py [--tokens 128] [--rounds 5] [--positions 16,64,112]

1. Time to the first new token after forcing a token at position p, three ways, alternated in
   each round: the chat's force (ChatSession.force: fork the answer's cache at prompt + p - 1,
   feed the token before p — its logits give the forced token's facts — and the forced one);
   regenerating from the prompt's cache (fork at the prompt, feed the p answer tokens + the
   forced one); and from scratch (no cache: the whole prompt + p + 1 tokens prefilled).
2. Decode tok/s with and without recording per-token log-probability, entropy and top-5
   alternatives (the TokenRecorder observing the loop's own logits), alternated.
3. The attack screen's lattice: seconds to rescore one edit (split / merge / boundary move)
   through the cached scorer, against scoring the same tokenization from scratch.

Prints a table and writes bench/results/branching.json; ratios are within this run.
"""
from __future__ import annotations

import argparse
import time

from _util import env_record, median_iqr, write_result

import torch

from engine.lm.forward import get_forward
from engine.lm.generate import generate
from engine.lm.model import load_model
from engine.lm.config import SamplingConfig
from engine.lm.tokeninfo import TokenRecorder

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def _ms(xs: list[float]) -> dict:
    m, q1, q3 = median_iqr(xs)
    return {"median_s": m, "q1_s": q1, "q3_s": q3}


def first_token_after_force(lm, ids: list[int], n: int, positions: list[int], rounds: int) -> dict:
    """``ids`` are the prompt as a chat session encodes it (the session's own ids are used)."""
    from engine.lm.chat import ChatSession

    fwd = get_forward(lm)
    s = ChatSession(lm, sampling=SamplingConfig(max_new_tokens=n, temperature=0.0))
    s.send(PROMPT)
    root = s.turns[-1]
    assert len(root.answer_ids) == n, "EOS is ignored: the answer has exactly n tokens"
    ids = s.ids[:len(s.ids) - len(root.answer_ids)]
    base = fwd.fork(s.cache, keep=len(ids) - 1)  # the prompt's cache, as the chat keeps it
    out: dict = {"answer_tokens": n, "prompt_tokens": len(ids), "positions": {}}
    for p in positions:
        alt = root.infos[p].alternatives[1].id  # the runner-up token there
        times: dict[str, list[float]] = {"branch_fork": [], "from_prompt_cache": [], "from_scratch": []}
        one = SamplingConfig(max_new_tokens=1, temperature=0.0)
        budget = SamplingConfig(max_new_tokens=p + 2, temperature=0.0)  # one new token
        feed = root.answer_ids[:p] + [alt]
        firsts = set()
        for _ in range(rounds + 1):  # the first round warms up and is dropped
            t = time.perf_counter()
            s.force(0, p, alt, sampling=budget)  # the chat's own path: fork at prompt + p
            t_branch = time.perf_counter() - t
            b = s.turns[-1]
            s.show(root.id)  # back to the first answer (its cache is kept up to p)
            t = time.perf_counter()
            r1, _ = generate(lm, ids[-1:] + feed, one, cache=fwd.fork(base))
            t_prompt = time.perf_counter() - t
            t = time.perf_counter()
            r2, _ = generate(lm, ids + feed, one)
            t_scratch = time.perf_counter() - t
            firsts.add((b.answer_ids[p + 1], r1.token_ids[0], r2.token_ids[0]))
            if _ == 0:
                continue
            times["branch_fork"].append(t_branch)
            times["from_prompt_cache"].append(t_prompt)
            times["from_scratch"].append(t_scratch)
        row: dict = {k: _ms(v) for k, v in times.items()}
        row["same_next_token"] = len({f for trio in firsts for f in trio}) == 1
        row["speedup_vs_prompt_cache"] = row["from_prompt_cache"]["median_s"] / row["branch_fork"]["median_s"]
        row["speedup_vs_scratch"] = row["from_scratch"]["median_s"] / row["branch_fork"]["median_s"]
        out["positions"][str(p)] = row
    return out


def alternatives_cost(lm, ids: list[int], tokens: int, rounds: int) -> dict:
    cfg = SamplingConfig(max_new_tokens=tokens, temperature=0.0)
    generate(lm, ids, SamplingConfig(max_new_tokens=4, temperature=0.0))
    rows: dict[str, list[float]] = {"plain": [], "with_alternatives": []}
    for _ in range(rounds):
        r, _c = generate(lm, ids, cfg)
        rows["plain"].append(r.decode_tok_s)
        rec = TokenRecorder(lm.tokenizer, top_k=5)
        r2, _c = generate(lm, ids, cfg, observe=rec)
        assert r2.token_ids == r.token_ids and len(rec.infos) == tokens
        rows["with_alternatives"].append(r2.decode_tok_s)
    res = {k: dict(zip(("median", "q1", "q3"), median_iqr(v))) for k, v in rows.items()}
    res["ratio"] = res["with_alternatives"]["median"] / res["plain"]["median"]
    return res


MEMO_HIT_S = 1e-3  # below this an edit was answered from the scorer's memo


def lattice_edits(lm, rounds: int) -> dict:
    from engine.advtok.lattice import TokenLattice
    from engine.advtok.score import reference_scores
    from engine.advtok.search import DEFAULT_SYSTEM
    from engine.errors import InputError

    t = time.perf_counter()
    lat = TokenLattice(lm, "Write a short poem about the sea and the lighthouse at night.",
                       "Sure, here is a short poem", DEFAULT_SYSTEM)
    build = time.perf_counter() - t
    edit_s, scratch_s, diffs = [], [], []
    for k in range(rounds):
        i = next(j for j, (a, b, _) in enumerate(lat.spans()) if b - a >= 3 and j >= k)
        for edit in (lambda: lat.split(i), lambda: lat.merge(i), lambda: lat.shift(i, 1)):
            try:
                ed = edit()
            except InputError:  # not every edit exists at every token
                continue
            edit_s.append(ed.seconds)
            t = time.perf_counter()
            ref = reference_scores(lm, lat.prefix, [ed.ids], lat.between, lat.targets)[0]
            scratch_s.append(time.perf_counter() - t)
            diffs.append(abs(ref - ed.score))
        lat.reset()
    # an edit that lands on a tokenization already scored is a memo hit (no forward): report the
    # edits that needed a forward on their own, so hits cannot pull the median down
    fresh = [s for s in edit_s if s >= MEMO_HIT_S]
    return {"build_s": build, "edit": _ms(edit_s), "edit_fresh": _ms(fresh) if fresh else None,
            "edit_fresh_max_s": max(fresh) if fresh else None, "memo_hits": len(edit_s) - len(fresh),
            "scratch": _ms(scratch_s), "max_abs_diff": max(diffs), "edits": len(edit_s)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128, help="answer length n")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--positions", default="16,64,112")
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--sections", default="force,alternatives,lattice",
                    help="which parts to run; a subset writes branching_<parts>.json")
    args = ap.parse_args()
    parts = [x for x in args.sections.split(",") if x]
    positions = [int(x) for x in args.positions.split(",")]
    lm = load_model("default")
    ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                           add_generation_prompt=True, return_dict=False)
    data: dict = {"env": env_record(), "forward": get_forward(lm).name}
    saved, lm.eos_ids = lm.eos_ids, []  # same lengths on every side
    try:
        if "force" in parts:
            data["ttft_after_force"] = ttft = first_token_after_force(lm, ids, args.tokens,
                                                                      positions, args.rounds)
            print(f"prompt {ttft['prompt_tokens']} tokens, answer n = {ttft['answer_tokens']} "
                  f"tokens, forward {data['forward']}")
            print(f"{'p':>5} | {'branch (fork) s':>15} | {'from prompt cache s':>19} | "
                  f"{'from scratch s':>14} | {'× vs prompt':>11} | {'× vs scratch':>12}")
            for p, row in ttft["positions"].items():
                print(f"{p:>5} | {row['branch_fork']['median_s']:>15.4f} | "
                      f"{row['from_prompt_cache']['median_s']:>19.4f} | "
                      f"{row['from_scratch']['median_s']:>14.4f} | "
                      f"{row['speedup_vs_prompt_cache']:>10.2f}× | {row['speedup_vs_scratch']:>11.2f}×",
                      flush=True)
        if "alternatives" in parts:
            data["alternatives_cost"] = alts = alternatives_cost(lm, ids, args.decode_tokens,
                                                                 args.rounds)
            print(f"decode {args.decode_tokens} tokens: plain {alts['plain']['median']:.1f} tok/s, "
                  f"with top-5 alternatives {alts['with_alternatives']['median']:.1f} tok/s "
                  f"(×{alts['ratio']:.3f})", flush=True)
    finally:
        lm.eos_ids = saved
    if "lattice" not in parts:
        path = write_result("branching" if len(parts) == 3 else "branching_" + "_".join(parts), data)
        print(f"→ {path}")
        return
    data["lattice"] = lat = lattice_edits(lm, args.rounds)
    path = write_result("branching" if len(parts) == 3 else "branching_" + "_".join(parts), data)
    fresh = lat["edit_fresh"]
    fresh_txt = (f"{fresh['median_s']:.3f} s median, {lat['edit_fresh_max_s']:.3f} s max"
                 if fresh else "none needed a forward")
    print(f"lattice: built in {lat['build_s']:.2f} s; {lat['edits']} edits: {lat['memo_hits']} memo hits, "
          f"the rest rescored in {fresh_txt} (from scratch {lat['scratch']['median_s']:.3f} s), "
          f"max |Δscore| {lat['max_abs_diff']:.1e}")
    print(f"→ {path}")


if __name__ == "__main__":
    main()
