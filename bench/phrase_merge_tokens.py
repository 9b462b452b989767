"""Phrase merge's token savings per suite (issue 23), bundled tokenizer only: the merges each
suite's domain material gives (engine/bench/suites/domain/), then every measured query's prompt
token count before and after — the whole chat prompt, and beside it the last user message alone
(document + question: the system prompt and the chat template's text are merged too, so both
figures are shown) — and the held-out prose. Token counts are exact and do not depend on the machine's load; no model is run.

    .venv/bin/python bench/phrase_merge_tokens.py [--suites core-v1,seed-v1] [--max-phrases 64]

Prints a table and writes bench/results/phrase_merge_tokens.json.
"""
from __future__ import annotations

import argparse
import time

from _util import env_record, write_result

from engine.bench.methods import make_method
from engine.bench.methods.base import render_chat, user_content
from engine.bench.methods.phrase_merge import domain_sequences
from engine.bench.methods.phrase_vocab import learn_merges
from engine.bench.suite import load_suite
from engine.lm.model import load_tokenizer
from engine.lm.templates import encode_user_text


def pct(a: int, b: int) -> float:
    return round(100.0 * (a - b) / a, 1) if a else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suites", default="core-v1,seed-v1")
    ap.add_argument("--max-phrases", type=int, default=64)
    args = ap.parse_args()
    tok = load_tokenizer("default", convert=False)
    out: dict = {"env": env_record(), "max_phrases": args.max_phrases, "suites": {}}
    for name in args.suites.split(","):
        suite = load_suite(name)
        m = make_method("phrase-merge", max_phrases=args.max_phrases)
        m.use_suite(suite)
        seqs = domain_sequences(tok, m, suite.domain)
        t0 = time.perf_counter()
        v = learn_merges(tok, seqs, len(tok), max_phrases=args.max_phrases)
        learn_s = time.perf_counter() - t0
        rows, tot = [], [0, 0, 0, 0]
        for q in suite.queries:
            full = render_chat(tok, m.messages(q, q.document))
            user = encode_user_text(tok, user_content(q.prompt, q.document))
            fm, um = len(v.encode_ids(full)), len(v.encode_ids(user))
            rows.append({"query": q.id, "kind": q.kind, "prompt_tokens": len(full),
                         "prompt_merged": fm, "saved_pct": pct(len(full), fm),
                         "user_tokens": len(user), "user_merged": um,
                         "user_saved_pct": pct(len(user), um)})
            for i, x in enumerate((len(full), fm, len(user), um)):
                tot[i] += x
        prose = None
        if suite.prose:
            p = encode_user_text(tok, suite.prose)
            prose = {"tokens": len(p), "merged": len(v.encode_ids(p)),
                     "saved_pct": pct(len(p), len(v.encode_ids(p)))}
        out["suites"][name] = {
            "domain": m.params["domain"], "domain_examples": len(suite.domain),
            "domain_tokens": sum(map(len, seqs)), "merges": len(v.merges),
            "learn_s": round(learn_s, 2),
            "top_merges": [tok.decode(v.parts(v.new_id(k))) for k in range(min(16, len(v.merges)))],
            "queries": rows, "prompt_saved_pct": pct(tot[0], tot[1]),
            "user_text_saved_pct": pct(tot[2], tot[3]), "prose": prose}
        print(f"{name}: {len(v.merges)} merges from {len(suite.domain)} domain examples "
              f"({sum(map(len, seqs))} tokens)")
        print(f"  {'query':<16}{'prompt':>8}{'merged':>8}{'saved':>8}{'user text':>11}{'merged':>8}{'saved':>8}")
        for r in rows:
            print(f"  {r['query']:<16}{r['prompt_tokens']:>8}{r['prompt_merged']:>8}{r['saved_pct']:>7}%"
                  f"{r['user_tokens']:>11}{r['user_merged']:>8}{r['user_saved_pct']:>7}%")
        print(f"  {'all':<16}{tot[0]:>8}{tot[1]:>8}{pct(tot[0], tot[1]):>7}%"
              f"{tot[2]:>11}{tot[3]:>8}{pct(tot[2], tot[3]):>7}%")
        if prose:
            print(f"  held-out prose: {prose['tokens']} → {prose['merged']} ({prose['saved_pct']}%)")
    print("wrote", write_result("phrase_merge_tokens", out))


if __name__ == "__main__":
    main()
