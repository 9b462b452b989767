"""`tokenforge search`: MaxEnt tree search toward a reward, headless, next to the greedy answer.

Ctrl+C (app/interrupt.py) stops the search: the best answer found so far is still shown (and
saved with --json), exit 130."""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from typing import Any

from app.inert import console as inert_console, styled, text
from app.commands.common import add_model_args, err_console, fail, guard, load_lm, write_export
from app.interrupt import cancel_token, phase

REWARD_HELP = ("words:kitten,moon · regex:PATTERN · answer:LABEL · length:MIN-MAX (words; MIN-MAXc "
               "chars, MIN-MAXt tokens) · loglik:TARGET TEXT · plugin:module:function (needs --allow-plugin)")


def register(sub: Any) -> None:
    p = sub.add_parser("search", help="MaxEnt tree search over tokens toward a reward",
                       description="Diffusion Tree Sampling over tokens: search mode returns the best "
                                   "completion found, sample mode draws from q·exp(λ·reward).")
    add_model_args(p)
    p.add_argument("--prompt", required=True, help="user message (goes through the chat template)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--reward", required=True, help=REWARD_HELP)
    p.add_argument("--allow-plugin", action="store_true",
                   help="allow plugin:module:function rewards (runs your own Python code)")
    p.add_argument("--rollouts", type=int, default=10)
    p.add_argument("--horizon", type=int, default=50, help="max NEW tokens per completion")
    p.add_argument("--lambda", dest="lam", type=float, default=1.0, help="inverse temperature λ")
    p.add_argument("--mode", choices=("search", "sample"), default="search")
    p.add_argument("--samples", type=int, default=1, help="answers to draw in sample mode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=1.0, help="base policy q temperature (> 0)")
    p.add_argument("--top-p", type=float, default=0.95, help="base policy q top-p")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="base policy q repetition penalty (1 = off)")
    p.add_argument("--widening", type=int, default=3, help="draws from q per node before selecting")
    p.add_argument("--widening-alpha", type=float, default=0.0, help="budget grows as visits^α")
    p.add_argument("--exploration", type=float, default=0.0,
                   help="UCT bonus c in search mode (our addition to DTS*; 0 = paper)")
    p.add_argument("--max-depth", type=int, default=None, help="deepest stored tree level")
    p.add_argument("--batch", type=int, default=5, help="rollouts decoded together per round")
    p.add_argument("--json", default=None, metavar="OUT.json", help="write the full result here")
    p.add_argument("--allow-special-tokens", action="store_true",
                   help="let special-token strings typed in --prompt/--system (e.g. <|im_end|>) "
                        "become control tokens (default: they are spelt as text, as in chat)")


def _cfg(args: argparse.Namespace) -> Any:
    from engine.treesearch.search import TreeConfig

    return TreeConfig(rollouts=args.rollouts, widening=args.widening, widening_alpha=args.widening_alpha,
                      lam=args.lam, temperature=args.temperature, top_p=args.top_p,
                      repetition_penalty=args.repetition_penalty,
                      horizon=args.horizon, max_depth=args.max_depth, exploration=args.exploration,
                      mode=args.mode, n_samples=args.samples, batch=args.batch, seed=args.seed)


def _snippet(text: str, n: int = 60) -> str:
    t = " ".join(text.split())
    return t if len(t) <= n else "…" + t[-(n - 1):]


@guard
def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from engine.errors import InputError
    from engine.treesearch.rewards import parse_reward

    if not args.prompt.strip():
        return fail("empty prompt: nothing to search from")
    reward = parse_reward(args.reward, allow_plugin=args.allow_plugin)
    cfg = _cfg(args).validate()
    err = err_console()
    if reward.runs_user_code:
        err.print(styled("[yellow]reward runs your own code:[/] {d}", d=reward.description))
    lm = load_lm(args)
    from engine.lm.templates import chat_prompt_ids

    prompt_ids = chat_prompt_ids(lm.tokenizer, args.prompt, args.system,
                                 allow_special=args.allow_special_tokens)
    if not prompt_ids:
        raise InputError("the chat template produced no tokens")
    cfg.validate(lm.context_length, len(prompt_ids))

    from engine.treesearch.versus_greedy import search_then_greedy

    started = time.time()
    with Progress(TextColumn("[bold]tree[/]"), BarColumn(bar_width=16), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}", markup=False), console=err, transient=False) as bar:
        task = bar.add_task("tree", total=cfg.rollouts, info="")

        def progress(p: Any) -> None:
            phase(p.phase)
            if p.phase != "tree":
                return
            m = p.metrics
            best = m.get("best_reward")
            info = (f"{m.get('nodes', 0)} nodes · {m.get('tok_s', 0)} tok/s"
                    + (f" · best {best:.3f} “{_snippet(m.get('best_text', ''), 30)}”" if best is not None else ""))
            bar.update(task, completed=p.step, info=info)

        # the tree search, then the greedy answer: one orchestration with the TUI's search screen
        both = search_then_greedy(lm, prompt_ids, reward, cfg, progress=progress,
                                  cancel=cancel_token())
    res = both.result
    greedy = None  # none when the search did not complete or Ctrl+C stopped the greedy answer
    if both.greedy_text is not None and both.greedy_stop != "cancelled":
        if both.greedy_error:
            err.print(styled("[red]reward failed on the greedy answer:[/] {e}", e=both.greedy_error))
        greedy = (both.greedy_text, both.greedy_reward)

    phase("write")
    out = inert_console()
    table = Table(title=text(f"reward {reward.spec} · {cfg.mode} mode · λ {cfg.lam} · "
                             f"{res.rollouts_done}/{cfg.rollouts} rollouts"), show_lines=True)
    table.add_column("answer", style="bold")
    table.add_column("reward", justify="right")
    table.add_column("text", overflow="fold")
    if res.best is not None:
        table.add_row("tree search (best)", f"{res.best.reward:.3f}", text(res.best.text, multiline=True))
    else:
        table.add_row("tree search (best)", "—", "(no rollout finished)")
    for i, s in enumerate(res.samples):
        table.add_row(f"sample {i + 1}", f"{s.reward:.3f}", text(s.text, multiline=True))
    if greedy is not None:
        table.add_row("greedy", "—" if greedy[1] is None else f"{greedy[1]:.3f}", text(greedy[0], multiline=True))
    out.print(table)
    err.print(styled("[dim]{n} nodes · depth {d} · root v̂ {v:.3f} · {t} tokens in {s:.1f} s "
                     "({r:.1f} tok/s while decoding) · forward {f} · stop: {stop}[/]",
                     n=res.nodes, d=res.max_depth, v=res.root_value, t=res.generated_tokens,
                     s=res.total_s, r=res.tok_s, f=res.forward, stop=res.stop_reason))
    if args.json:  # the TUI's export envelope (engine/export.py), kind "tree", as the screen's
        settings = {"prompt": args.prompt, "system": args.system, "reward": reward.spec,
                    "allow_plugin": args.allow_plugin, **asdict(cfg)}
        write_export(args.json, "tree", both, settings=settings, lm=lm, started_at=started,
                     cancelled=res.stop_reason == "cancelled" or cancel_token().cancelled)
    if res.stop_reason == "reward_error":
        return fail(f"the reward failed: {res.error}", "the partial result is shown above", code=1)
    return 130 if res.stop_reason == "cancelled" or cancel_token().cancelled else 0
