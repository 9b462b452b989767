"""``tokenforge attack replay RESULTS --row ID``: re-score and re-sample one recorded row and
say whether it matches (exit 0 when everything matches, 1 when something differs)."""
from __future__ import annotations

import argparse
from typing import Any


from app.inert import console as inert_console
from app.commands.common import add_model_args, err_console, load_lm, read_attack_results
from app.interrupt import cancel_token, phase


def register_replay(sub: Any) -> None:
    r = sub.add_parser("replay", help="re-score and re-sample one row; report whether it matches")
    r.add_argument("results")
    r.add_argument("--row", required=True, metavar="ID", help="the row id (see the 'id' field)")
    r.add_argument("--no-samples", action="store_true", help="only re-score, do not re-sample")
    add_model_args(r)
    r.set_defaults(model=None, engine_path=None)


def replay_cmd(args: argparse.Namespace) -> int:
    from engine.advtok.replay import SCORE_TOL, replay_record
    from engine.errors import InputError

    rr = read_attack_results(args.results)
    rec = next((r for r in rr.records if str(r.get("id", r.get("key"))) == args.row), None)
    if rec is None:
        raise InputError(f"{args.results}: no row {args.row!r}")
    model = rec.get("model") or {}
    if args.model is None:            # default: the recorded model and forward
        args.model = model.get("spec") or "default"
    if args.engine_path is None:
        args.engine_path = model.get("engine_path") or "fast"
    lm = load_lm(args)
    phase("replay")
    res = replay_record(lm, rec, samples=not args.no_samples, cancel=cancel_token())
    cancel_token().check()    # a stopped replay is no verdict: exit 130 without one
    phase("write")
    out = inert_console()

    def ok(b: bool) -> str:
        return "match" if b else "DIFFERS"
    out.print(f"row {res.row}: weights {ok(res.weights_match)}", markup=False)
    for side, m in res.prompts_match.items():
        out.print(f"  {side} prompt ids: {ok(m)}", markup=False)
    for side, (a, b) in res.scores.items():
        same = a is not None and abs(a - b) <= SCORE_TOL
        out.print(f"  {side} score: recorded {a} replayed {b:.6f} ({ok(same)})", markup=False)
    for side, ms in res.samples_match.items():
        out.print(f"  {side} samples: {sum(ms)}/{len(ms)} identical token ids", markup=False)
    for n in res.notes:
        err_console().print(f"note: {n}", style="yellow", markup=False)
    out.print("replay " + ("matches" if res.matches else "DIFFERS"), markup=False)
    return 0 if res.matches else 1
