"""`tokenforge sessions list | show NAME [--json] | export NAME [--markdown F] | rename OLD NEW |
delete NAME`: everything the TUI saves (F7), scriptable. No model is loaded.

``show --json`` gives the whole variants tree: ``turns`` is the conversation shown last (what the
TUI reopens), each with its variant number among the answers at that turn; ``nodes`` is every
exchange ever answered (regenerated, forced, edited variants included) with its answer's token
ids, figures and per-token facts. Names, messages and answers are data: printed inert (controls
shown escaped, no markup read), JSON with every control and bidi character escaped. ``rename``
and ``delete`` take the session's writer lock (engine/sessions/writer_lock.py): while a chat
(the TUI, ``chat --session``) has the session open they are refused, naming that process."""
from __future__ import annotations

import argparse
import json
import time
from typing import Any

from app.commands.common import guard
from app.inert import console, styled, text
from app.interrupt import phase

ACTIONS = ("list", "show", "export", "rename", "delete")
#: characters json.dumps(ensure_ascii=False) leaves raw that a terminal acts on (DEL, C1, bidi)
_JSON_UNSAFE = {c: f"\\u{ord(c):04x}" for c in
                [chr(0x7f)] + [chr(i) for i in range(0x80, 0xa0)] +
                [chr(i) for i in (0x2028, 0x2029, *range(0x202a, 0x202f), *range(0x2066, 0x206a))]}


def register(sub: Any) -> None:
    p = sub.add_parser("sessions", help="list, show, export, rename or delete saved chat sessions",
                       description="The saved chat sessions (the TUI's F7; chat --session NAME).")
    acts = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = acts.add_parser("list", help="every session, most recent first")
    ls.add_argument("--json", action="store_true", help="as JSON")
    show = acts.add_parser("show", help="one session: its conversation and every answer variant")
    show.add_argument("name")
    show.add_argument("--json", action="store_true",
                      help="the whole tree as JSON (turns shown, every variant, token data)")
    ex = acts.add_parser("export", help="one session as Markdown (stdout, or --markdown FILE)")
    ex.add_argument("name")
    ex.add_argument("--markdown", default=None, metavar="FILE", help="write the Markdown to FILE")
    ex.add_argument("--force", action="store_true", help="replace an existing FILE")
    rn = acts.add_parser("rename", help="rename a session")
    rn.add_argument("name")
    rn.add_argument("new_name", metavar="NEW")
    dl = acts.add_parser("delete", help="delete a session and its KV snapshots")
    dl.add_argument("name")


def _store() -> Any:
    from engine.sessions.store import SessionStore

    store = SessionStore()
    if store.notice:
        console(stderr=True).print(text(store.notice, "yellow"))
    return store


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "–"


def json_text(doc: Any) -> str:
    """JSON a terminal cannot act on: controls, DEL, C1 and bidi characters as \\u escapes."""
    s = json.dumps(doc, ensure_ascii=False, indent=2)
    return "".join(_JSON_UNSAFE.get(c, c) for c in s)


@guard
def run(args: argparse.Namespace) -> int:
    phase("load")
    store = _store()
    try:
        return {"list": _list, "show": _show, "export": _export, "rename": _rename,
                "delete": _delete}[args.action](store, args)
    finally:
        store.close()


def _list(store: Any, args: argparse.Namespace) -> int:
    infos = store.list()
    if args.json:
        print(json_text([{"name": i.name, "created": i.created, "updated": i.updated,
                          "model": i.model_id, "turns": i.turns, "variants": i.variants,
                          "first_message": i.preview, **({"unreadable": i.problem} if i.problem else {})}
                         for i in infos]))
        return 0
    out = console()
    if not infos:
        out.print("no saved sessions (every chat is saved as it goes: the TUI, chat --session NAME)")
        return 0
    from rich.table import Table

    t = Table(show_edge=False, pad_edge=False)
    for col in ("name", "updated", "model", "turns", "answers", "first message"):
        t.add_column(col, overflow="fold")
    for i in infos:
        t.add_row(text(i.name), _when(i.updated), text(i.model_id), str(i.turns), str(i.variants),
                  text(f"unreadable: {i.problem}") if i.problem else text(i.preview))
    out.print(t)
    return 0


def session_doc(store: Any, name: str) -> dict[str, Any]:
    """The whole saved session as plain data (the ``show --json`` document's result)."""
    from engine.lm.branching import turn_variants

    s = store.get(name)
    nodes = s.nodes
    at = {n.key: i for i, n in enumerate(nodes)}

    class _N:  # the navigation functions read id, prev, source, fork_at
        def __init__(self, i: int, n: Any) -> None:
            self.id, self.prev, self.source = i, at.get(n.prev), at.get(n.source)
            self.fork_at, self.answer_ids = n.fork_at, n.answer_ids

    view = [_N(i, n) for i, n in enumerate(nodes)]

    def node(n: Any) -> dict[str, Any]:
        return {"key": n.key, "prev": n.prev, "source": n.source, "fork_at": n.fork_at,
                "how": n.how, "state": n.state, "created": n.created, "user": n.user,
                "user_ids": n.user_ids, "answer": n.answer, "answer_ids": n.answer_ids,
                "metrics": n.metrics, "tokens": n.infos}

    turns = []
    for i, t in enumerate(s.turns):
        v = turn_variants(view, at[t.key]) if t.key in at else []
        turns.append({"key": t.key, "user": t.user, "answer": t.answer, "state": t.state,
                      "variant": v.index(at[t.key]) + 1 if v else 1, "variants": max(1, len(v)),
                      "dropped": i < s.live_from})
    return {"name": s.name, "model": s.model_id, "weights_hash": s.weights_hash,
            "system": s.system, "sampling": s.sampling, "created": s.created,
            "updated": s.updated, "live_from": s.live_from, "turns": turns,
            "nodes": [node(n) for n in nodes]}


def _show(store: Any, args: argparse.Namespace) -> int:
    doc = session_doc(store, args.name)
    if args.json:
        from engine.export import job_document

        print(json_text(job_document("session", doc, settings={"system": doc["system"],
                                                               "sampling": doc["sampling"]},
                                     model=doc["model"], started_at=doc["created"] or None,
                                     finished_at=doc["updated"] or None)))
        return 0
    out = console()
    out.print(styled("[bold]{n}[/] [dim]· {m} · {k} turns · {a} answers · updated {u}[/]",
                     n=doc["name"], m=doc["model"], k=len(doc["turns"]), a=len(doc["nodes"]),
                     u=_when(doc["updated"])))
    if doc["system"]:
        out.print(styled("[dim]system:[/] {s}", s=doc["system"]))
    by_key = {n["key"]: n for n in doc["nodes"]}
    for i, t in enumerate(doc["turns"]):
        n = by_key.get(t["key"], {})
        m = n.get("metrics") or {}
        var = f" · variant {t['variant']}/{t['variants']}" if t["variants"] > 1 else ""
        out.print(styled("\n[bold cyan]user[/] [dim]({i}{d})[/]", i=i + 1,
                         d=" · dropped from the context" if t["dropped"] else ""))
        out.print(text(t["user"]))
        out.print(styled("[bold green]assistant[/] [dim]{f}{v}{s}[/]",
                         f=f"{m.get('new_tokens', len(n.get('answer_ids', [])))} tokens · stop: "
                           f"{m.get('stop_reason', '?')}", v=var,
                         s=" · stopped" if t["state"] == "stopped" else ""))
        out.print(text(t["answer"]))
    return 0


def _export(store: Any, args: argparse.Namespace) -> int:
    from engine.sessions.export import to_markdown

    md = to_markdown(store.get(args.name))
    if args.markdown is None:
        console().print(text(md))  # for reading: controls shown escaped
        return 0
    from engine.atomic import write_text

    phase("write")
    write_text(args.markdown, md)  # the same Markdown as the F7 export
    console(stderr=True).print(styled("[dim]wrote {p}[/]", p=args.markdown))
    return 0


def _rename(store: Any, args: argparse.Namespace) -> int:
    from engine.sessions.writer_lock import rename_session

    phase("write")
    new, _ = rename_session(store, args.name, args.new_name)  # refused while a chat writes it
    console(stderr=True).print(styled("renamed {a!r} to {b!r}", a=args.name, b=new))
    return 0


def _delete(store: Any, args: argparse.Namespace) -> int:
    from engine.sessions.snapshot import SnapshotStore
    from engine.sessions.store import sessions_dir
    from engine.sessions.writer_lock import delete_session

    phase("write")
    delete_session(store, SnapshotStore(sessions_dir() / "snapshots"), args.name)
    console(stderr=True).print(styled("deleted {n!r}", n=args.name))
    return 0
