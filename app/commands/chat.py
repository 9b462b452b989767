"""`tokenforge chat`: a streaming REPL over a conversation KV cache (or one answer with --prompt).

Ctrl+C (app/interrupt.py) during an answer stops only that answer (the partial answer stays in
the conversation), a second press exits 130; Ctrl+C at the prompt exits."""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console

from app.commands.common import add_model_args, err_console, fail, guard, load_lm
from app.inert import printable, styled
from engine.inert import json_text
from app.interrupt import cancel_token, current as interrupts, phase
from engine.lm.sampling_defaults import MODEL, MODEL_CARD, MODEL_KEYS, resolve

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

HELP = "commands: /new (new conversation), /system TEXT, /exit — Ctrl+C stops an answer, at the prompt it exits"


def register(sub: Any) -> None:
    p = sub.add_parser("chat", help="chat with the model (streams tokens, reuses the KV cache)")
    add_model_args(p)
    p.add_argument("--system", default=None, help="system prompt (encoded once)")
    p.add_argument("--prompt", default=None, help="answer this one message and exit")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.0,
                   help="drop tokens below min-p × the top token's probability (0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    p.add_argument("--banned-ids", default=None, metavar="ID[,ID…]",
                   help="token ids never generated, comma-separated")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--session", default=None, metavar="NAME",
                   help="continue (or start) the saved session NAME; every turn is saved, and "
                        "its KV cache is restored from a snapshot so only new tokens are prefilled")
    p.add_argument("--json", action="store_true", help="with --prompt: print the result as JSON "
                   "(with each token's log-probability, entropy and alternatives)")
    p.add_argument("--alternatives", type=int, default=5, metavar="K",
                   help="with --json: top-K alternatives per token (default 5, 0 = none)")


def _answer(session: Any, text: str, quiet: bool, observe: Any = None) -> Any:
    """One turn, streamed. Ctrl+C (app/interrupt.py) stops it: the partial answer is returned
    (stop_reason 'cancelled'); a press before the answer began raises Cancelled with the session
    as it was."""
    def on_token(delta: str, _tid: int) -> None:
        phase("generate")
        if not quiet:
            sys.stdout.write(printable(delta, multiline=True))  # a model's output: shown inert
            sys.stdout.flush()

    def progress(p: Any) -> None:
        if p.phase == "prefill":
            phase("prefill")

    return session.send(text, on_token=on_token, progress=progress, cancel=cancel_token(),
                        observe=observe)


def _figures(r: Any, inexact: str = "") -> str:
    s = (f"{inexact + ' · ' if inexact else ''}{r.new_tokens} tokens · prefill {r.prefill_tokens} · TTFT {r.ttft_s:.2f} s · "
         f"{r.decode_tok_s:.1f} tok/s · stop: {r.stop_reason}")
    if r.dropped_turns:
        s += f" · dropped {r.dropped_turns} old turn(s)"
    return s


def _claim_session(name: str) -> tuple[Any, Any]:
    """Before the model loads: the sessions database, checked writable (a read-only or
    unreadable file is refused here, not after an answer), and this session's writer lock (a
    second process on the same session is told which process holds it)."""
    from engine.sessions.store import SessionStore
    from engine.sessions.writer_lock import session_lock

    store = SessionStore()
    try:
        return store, session_lock(store.path, name).acquire()
    except BaseException:
        store.close()
        raise


def _open_session(lm: LoadedModel, args: argparse.Namespace, cfg: Any, err: Console,
                  claimed: tuple[Any, Any]) -> tuple[Any, dict[str, Any]]:
    """The saved session named by --session (created when new), and what to report about it."""
    from engine.sessions.persist import PersistentChat
    from engine.sessions.snapshot import SnapshotStore
    from engine.sessions.store import sessions_dir

    conf = getattr(args, "tf_config", None)
    cap = int((conf.snapshot_cap_mib if conf is not None else 512) * (1 << 20))
    store, lock = claimed
    chat = PersistentChat(lm, args.session, system=args.system, sampling=cfg, store=store,
                          lock=lock, snapshots=SnapshotStore(sessions_dir() / "snapshots", cap))
    rep = chat.report
    if args.system is not None and chat.session.system != (args.system.strip() or None) \
            and rep.how != "new":
        rep.notes.append("the saved session's system prompt is kept (--system ignored)")
    for n in rep.notes:  # may name the saved model id, a path: data
        err.print(styled("[yellow]{n}[/]", n=n))
    if rep.how != "new":
        how = (f"KV restored from snapshot ({rep.restored_tokens} tokens)" if rep.how == "snapshot"
               else rep.how)
        err.print(styled("[dim]session {s!r}: {t} turn(s), {how}[/]", s=args.session,
                         t=len(chat.all_turns), how=how))
    return chat, {"session": args.session, "restored": rep.how,
                  "restored_tokens": rep.restored_tokens}


def _model_sampling(args: argparse.Namespace, lm: LoadedModel, cfg: Any) -> tuple[Any, dict[str, Any]]:
    """The loaded model's own sampling defaults (engine.lm.sampling_defaults) for the values no
    flag or profile set, and where each value came from (for ``--json``)."""
    from dataclasses import replace

    sources = dict(getattr(args, "tf_sources", {}) or {})
    values, srcs = resolve({k: getattr(cfg, k) for k in MODEL_KEYS}, sources,
                           lm.sampling_defaults)
    cfg = replace(cfg, **values).validate()
    return cfg, {k: {"value": values[k], "source": srcs[k]} for k in MODEL_KEYS}


@guard
def run(args: argparse.Namespace) -> int:
    from engine.lm.chat import ChatSession
    from engine.errors import InputError
    from engine.lm.config import ChatConfig, SamplingConfig

    cfg = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                         stop_strings=tuple(args.stop), min_p=args.min_p,
                         repetition_penalty=args.repetition_penalty,
                         banned_ids=tuple(args.banned_ids or ())).validate()
    if args.prompt is not None and not args.prompt.strip():
        return fail("empty prompt: nothing to answer")
    ChatConfig(system=args.system, alternatives=args.alternatives).validate()
    claimed = _claim_session(args.session) if args.session is not None else None
    lm = load_lm(args)
    err = err_console()
    cfg, sampling_info = _model_sampling(args, lm, cfg)
    if not args.json and any(v["source"] in (MODEL, MODEL_CARD) for v in sampling_info.values()):
        err.print(styled("[dim]sampling {s} (a flag, profile or Settings value wins)[/]",
                         s=" · ".join(f"{k} {v['value']:g} ({v['source']})"
                                      for k, v in sampling_info.items())))
    saved: dict[str, Any] = {}
    if claimed is not None:
        session, saved = _open_session(lm, args, cfg, err, claimed)
    else:
        session = ChatSession(lm, system=args.system, sampling=cfg)
    from engine.lm.forward import get_forward, is_exact

    fwd = get_forward(lm)  # the instance the session decodes with (cached on lm)
    # a reduced-precision path is named beside every answer's figures, not only at load time
    inexact = "" if is_exact(fwd) else f"{fwd.name} decode (INEXACT)"
    path_info = {"engine_path": fwd.name, "exact": not inexact, "sampling": sampling_info}
    if args.prompt is not None:
        rec = None
        if args.json:
            from engine.lm.tokeninfo import TokenRecorder

            rec = TokenRecorder(lm.tokenizer, args.alternatives)
        r = _answer(session, args.prompt, quiet=args.json, observe=rec)
        phase("write")
        if args.json:
            tokens = [i.to_dict() for i in rec.infos] if rec is not None else []
            print(json_text({"prompt": args.prompt, **r.to_dict(), **saved, **path_info, "tokens": tokens},
                            indent=2))
        else:
            print()
            err.print(styled("[dim]{f}[/]", f=_figures(r, inexact)))
        return 130 if r.stop_reason == "cancelled" else 0
    err.print(f"[dim]{HELP}[/]")
    return _repl(session, args, err, saved, path_info, inexact)


def _repl(session: Any, args: argparse.Namespace, err: Console, saved: dict[str, Any],
          path_info: dict[str, Any], inexact: str) -> int:
    """The interactive loop: Ctrl+C during an answer stops it (a second press exits 130), at
    the prompt it exits."""
    from engine.errors import InputError
    from engine.progress import Cancelled

    irq = interrupts()
    while True:
        irq.rearm()    # a press that stopped the last answer is spent
        try:
            with irq.idle(0):
                phase("prompt")
                text = input("\n› ")
        except EOFError:
            print()
            return 0
        cmd = text.strip()
        if cmd in ("/exit", "/quit"):
            return 0
        if cmd in ("/new",) or cmd.startswith("/system"):
            if args.session is not None:
                err.print("[red]/new and /system start another conversation: with --session, "
                          "open another session instead[/]")
                continue
        if cmd == "/new":
            session.reset()
            err.print("[dim]new conversation (system prompt cache kept)[/]")
            continue
        if cmd.startswith("/system"):
            session.reset(cmd[len("/system"):].strip() or None)
            err.print("[dim]system prompt set; new conversation[/]")
            continue
        try:
            r = _answer(session, text, quiet=args.json)
        except InputError as e:
            err.print(styled("[red]{e}[/]", e=e))
            continue
        except Cancelled:
            err.print("[yellow]stopped before the answer began: the message was not added[/]")
            continue
        if args.json:  # one line per turn: its figures (prefill tokens among them)
            print(json_text({"prompt": text, **r.to_dict(), **saved, **path_info}))
            saved = {k: v for k, v in saved.items() if k == "session"}
            continue
        print()
        err.print(styled("[dim]{f}[/]", f=_figures(r, inexact)))
        for n in r.notes:
            err.print(styled("[yellow]{n}[/]", n=n))
