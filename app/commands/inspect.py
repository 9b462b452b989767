"""``tokenforge inspect --prompt …``: a prompt and an answer token by token — ids, surprisal of
the prompt's tokens, each answer token's log-probability, entropy and alternatives, and with
--logit-lens every layer's guess for each answer token."""
from __future__ import annotations

import argparse
import math
from typing import Any

from rich.console import Console
from rich.table import Table

from engine.inert import json_text
from app.inert import console as inert_console, printable, text
from app.commands.common import add_model_args, fail, guard, load_lm
from app.interrupt import cancel_token, phase


def register(sub: Any) -> None:
    p = sub.add_parser("inspect", help="per-token log-probabilities, alternatives, surprisal, logit lens",
                       description="Score a chat prompt and an answer token by token. Without "
                                   "--response the answer is generated greedily.")
    p.add_argument("--prompt", required=True, help="the user message")
    p.add_argument("--response", default=None, help="the answer to score (default: generate one)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--top-k", type=int, default=5, help="alternatives per token (default 5)")
    p.add_argument("--logit-lens", action="store_true", help="every layer's top tokens per answer token")
    p.add_argument("--max-new-tokens", type=int, default=64, help="length of a generated answer")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_args(p)


def _pct(lp: float) -> str:
    return f"{100 * math.exp(lp):.1f}%"


def _show(s: str) -> str:
    return printable(s.replace(" ", "·")) or "∅"


def _print(ins: Any, out: Console, lens_cols: int = 10) -> None:
    t = Table(title="prompt", show_edge=False)
    for c in ("#", "id", "token", "part", "surprisal bits"):
        t.add_column(c)
    for tok, part in zip(ins.tokens, ins.parts):
        if part == "answer":
            continue
        s = tok.surprisal_bits
        t.add_row(str(tok.index), str(tok.id), text(_show(tok.text)), part, "" if s is None else f"{s:.2f}")
    out.print(t)
    a = Table(title="answer" + (" (generated, greedy)" if ins.generated else ""), show_edge=False)
    for c in ("#", "id", "token", "p", "logprob", "entropy", "alternatives"):
        a.add_column(c)
    for tok, part in zip(ins.tokens, ins.parts):
        if part != "answer" or tok.info is None:
            continue
        inf = tok.info
        alts = "  ".join(f"{_show(x.text)} {_pct(x.logprob)}" for x in inf.alternatives)
        a.add_row(str(tok.index), str(tok.id), text(_show(tok.text)), _pct(inf.logprob),
                  f"{inf.logprob:.3f}", f"{inf.entropy:.2f}", text(alts))
    out.print(a)
    if ins.lens:
        cols = sorted(ins.lens)[:lens_cols]
        lt = Table(title="logit lens: top token per layer" +
                   (f" (first {lens_cols} answer tokens; --json has all)" if len(ins.lens) > lens_cols else ""),
                   show_edge=False)
        lt.add_column("layer")
        for i in cols:
            lt.add_column(text(_show(ins.tokens[i].text)))
        for li in range(len(ins.lens[cols[0]])):
            lt.add_row(str(li + 1), *[text(f"{_show(ins.lens[i][li].top[0].text)} "
                                           f"{_pct(ins.lens[i][li].top[0].logprob)}") for i in cols])
        out.print(lt)


@guard
def run(args: argparse.Namespace) -> int:
    from engine.lm.config import ChatConfig, SamplingConfig
    from engine.lm.inspection import inspect_text

    if not args.prompt.strip():
        return fail("empty prompt: nothing to inspect")
    ChatConfig(prompt=args.prompt, system=args.system, response=args.response,
               alternatives=args.top_k).validate()  # before the model loads
    SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=0.0).validate()
    lm = load_lm(args)
    phase("inspect")
    ins = inspect_text(lm, args.prompt, args.response, system=args.system, top_k=args.top_k,
                       lens=args.logit_lens, max_new_tokens=args.max_new_tokens,
                       cancel=cancel_token())
    phase("write")
    if args.json:
        print(json_text({"model": lm.name, **ins.to_dict()}, indent=2))
    else:
        _print(ins, inert_console())
    return 0
