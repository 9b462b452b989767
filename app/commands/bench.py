"""`tokenforge bench`: run comparison methods over a query suite into an append-only JSONL, and
`tokenforge bench report FILE`: the aggregate table (+ PNGs, CSV) computed from that JSONL."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from app.inert import console as inert_console, esc, styled, text
from app.commands.common import add_model_args, err_console, guard, load_lm
from app.interrupt import cancel_token, phase

DEFAULT_METHODS = "baseline,kv-reuse,kv-fp8"


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="compare generation methods on a query suite (cost beside quality)",
                       description="`tokenforge bench [run] --methods … --out runs.jsonl` measures; "
                                   "`tokenforge bench report runs.jsonl [--png DIR] [--csv F]` aggregates.")
    add_model_args(p)
    p.add_argument("action", nargs="?", choices=("run", "report", "list"), default="run",
                   help="run (default), report FILE, or list the methods")
    p.add_argument("file", nargs="?", help="report: the runs JSONL")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated (default {DEFAULT_METHODS}; with --sweep: baseline)")
    p.add_argument("--suite", default="core-v1", help="shipped suite name or a .jsonl path")
    p.add_argument("--kinds", default=None, help="only these query kinds, e.g. chat,qa,long,prose")
    p.add_argument("--queries", default=None, help="only these query ids, e.g. chat-1,qa-2")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per (method, query), >= 1")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-warmup", action="store_true", help="skip the discarded warm-up run")
    p.add_argument("--natural-length", action="store_true",
                   help="timed runs stop at EOS (default: every run decodes --max-new-tokens, so "
                        "time and memory do not depend on the answer's length)")
    p.add_argument("--param", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="method parameter override (repeatable), e.g. evict-sinks.budget=128")
    p.add_argument("--sweep", action="append", default=[], metavar="METHOD.KEY=V1,V2,…",
                   help="run METHOD at each value of its ratio parameter, beside the baseline "
                        "(repeatable), e.g. evict-cake.budget=64,128,256; `bench list` names them")
    p.add_argument("--out", default="runs.jsonl", help="JSONL to append to (a rerun resumes)")
    p.add_argument("--png", default=None, metavar="DIR", help="report: write PNG plots here")
    p.add_argument("--csv", default=None, metavar="FILE", help="report: write the aggregate CSV")
    p.add_argument("--kind", default=None, help="report: only these query kinds, e.g. long or qa,long")
    p.add_argument("--markdown", default=None, metavar="FILE", help="report: write the table as Markdown")


def _split(v: Any) -> Any:
    return [s.strip() for s in v.split(",") if s.strip()] if v else None


#: --param values nest at most this deep (a record holds them ~3 levels down; the reader's limit
#: is engine.bounded_json.MAX_DEPTH)
PARAM_DEPTH = 8


def parse_params(items: list[str]) -> dict[str, dict]:
    from engine.errors import InputError

    out: dict[str, dict] = {}
    for it in items:
        if "=" not in it or "." not in it.split("=", 1)[0]:
            raise InputError(f"--param {it!r}: expected METHOD.KEY=VALUE")
        lhs, val = it.split("=", 1)
        method, key = lhs.split(".", 1)
        from engine.bounded_json import BadJSON, depth_of, loads

        if depth_of(val, PARAM_DEPTH) > PARAM_DEPTH:  # refused before anything is written
            raise InputError(f"--param {lhs}: value nested more than {PARAM_DEPTH} levels deep")
        try:
            value = loads(val, f"--param {lhs}")
        except BadJSON:
            value = val
        out.setdefault(method, {})[key] = value
    return out


@guard
def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list()
    if args.action == "report":
        return _report(args)
    return _run(args)


def _list() -> int:
    from engine.bench.methods import make_method, method_names

    t = Table(title="methods")
    t.add_column("name")
    t.add_column("label")
    t.add_column("changes model")
    t.add_column("how it simplifies its paper")
    parts = {}
    for n in method_names():
        m = make_method(n)
        t.add_row(text(n), text(m.label), "yes" if m.model_changing else "",
                  text(m.simplification or "—"))
        parts = getattr(m, "parts", None) or parts
    inert_console().print(t)
    if parts:
        inert_console().print("all-combined runs one method per part at once: " + ", ".join(
            f"{k} {p.name}" for k, p in parts.items()) + " (parameters: --param "
            "all-combined.PART.KEY=V)", highlight=False)
    from engine.bench.methods import CACHE_SIDE, PROMPT_SIDE

    inert_console().print(f"combinations, each run and measured as one configuration: PROMPT+CACHE with "
                    f"PROMPT in {', '.join(PROMPT_SIDE)} and CACHE in {', '.join(CACHE_SIDE)} "
                    f"(e.g. prune-selfinfo+kv-fp8; parameters: --param NAME.prompt.KEY=V / NAME.cache.KEY=V)",
                    highlight=False)
    from engine.bench.methods.params import RATIO_PARAMS

    inert_console().print("compression sweeps (--sweep METHOD.KEY=V1,V2,…): " + "; ".join(
        f"{n}.{rp.key} in {rp.bound.describe()} ({rp.meaning})" for n, rp in RATIO_PARAMS.items()),
        highlight=False)
    return 0


def _run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from engine.bench.harness import BenchConfig, run_bench
    from engine.bench.suite import load_suite
    from engine.errors import InputError

    if args.file:
        raise InputError(f"unexpected argument {args.file!r}", "did you mean `tokenforge bench report FILE`?")
    from engine.bench.sweep import parse_sweep

    sweeps = [parse_sweep(s) for s in args.sweep]
    methods = args.methods if args.methods is not None else ("baseline" if sweeps else DEFAULT_METHODS)
    cfg = BenchConfig(methods=_split(methods) or [], suite=args.suite, repeats=args.repeats,
                      max_new_tokens=args.max_new_tokens, seed=args.seed, warmup=not args.no_warmup,
                      fixed_length=not args.natural_length,
                      kinds=_split(args.kinds), query_ids=_split(args.queries),
                      params=parse_params(args.param), sweeps=sweeps)
    cfg.validate()  # bad names / repeats / sweep values fail before the model loads
    load_suite(cfg.suite, kinds=cfg.kinds, ids=cfg.query_ids)
    swept = {sw.method for sw in sweeps}
    for name in cfg.params:
        if name not in cfg.methods and name not in swept:
            raise InputError(f"--param for {name!r}, which is not among --methods or --sweep")
    from engine.bench.methods import make_method

    for name, params in cfg.method_specs():  # each instance's own checks (a window ≥ its budget …)
        make_method(name, **params)
    lm = load_lm(args)
    con = err_console()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=con, transient=False) as bar:
        task = bar.add_task("bench", total=None)

        calibrating: set[str] = set()

        def progress(p: Any) -> None:
            phase(p.phase)
            if p.phase == "calibrate" and not calibrating:  # minutes, once per model and text
                calibrating.add(p.phase)
                con.print(styled("[dim]{what} on {n} tokens: once per model and text, then read "
                                 "from the cache[/]", what=p.message.split(":")[0],
                                 n=f"{p.total or 0:,}"))
            bar.update(task, completed=p.step, total=p.total, description=esc(p.message[:70]))

        summary = run_bench(lm, cfg, args.out, progress=progress, cancel=cancel_token())
    con.print(styled("[green]{w} records written[/], {s} already present (resumed), {e} errors → {out}",
                     w=summary.written, s=summary.skipped, e=summary.errors, out=summary.out)
              + (" · interrupted" if summary.cancelled else ""))
    con.print(styled("[dim]load avg {a} → {b}; next: tokenforge bench report {out} --png docs/[/]",
                     a=summary.loadavg_start, b=summary.loadavg_end, out=summary.out))
    if summary.cancelled:
        return 130
    return 0 if summary.errors == 0 else 1


def report_table(rep: Any) -> Table:
    from engine.bench.report import TABLE_COLUMNS, table_rows

    t = Table(title=text(f"{rep.suite} · {rep.model.get('id')} · {rep.env.get('device')}"),
              caption=text(rep.footer(), multiline=True), caption_justify="left", show_lines=True)
    for i, c in enumerate(TABLE_COLUMNS):
        t.add_column(c, justify="left" if i == 0 else "right", overflow="fold")
    for cells in table_rows(rep, labels=False):
        t.add_row(*(text(c, multiline=True) for c in cells))
    return t


def legend(rep: Any) -> Text:
    lines = [styled("[bold]{k}[/]: {label}", k=r.key, label=r.label)
             + (styled(" — speed: {n}", n=r.speed_note) if r.speed_note else "") for r in rep.rows]
    return Text("\n").join(lines)


def _report(args: argparse.Namespace) -> int:
    from engine.bench.plots import write_pngs
    from engine.bench.report import load_report, to_markdown, write_csv
    from engine.errors import InputError
    from engine.atomic import write_text

    if not args.file:
        raise InputError("bench report needs the runs JSONL", "tokenforge bench report runs.jsonl")
    rep = load_report(args.file, kinds=_split(args.kind))
    con = inert_console()
    con.print(report_table(rep))
    con.print(legend(rep))
    from engine.bench.report import needle_table

    head, needle = needle_table(rep)
    if needle:
        t = Table(title="needle accuracy by planted-fact depth (long documents)")
        for h in head:
            t.add_column(text(h))
        for r in needle:
            t.add_row(*(text(c) for c in r))
        con.print(t)
    from engine.bench.report import breakdown_table, legend_footnote

    head, per_q = breakdown_table(rep)
    if per_q and len(head) > 1:
        t = Table(title="per query: total time ÷ baseline (repeats averaged) · KL")
        for h in head:
            t.add_column(text(h))
        for r in per_q:
            t.add_row(*(text(c) for c in r))
        con.print(t)
    from engine.bench.report import sweep_tables

    for title, head, rows in sweep_tables(rep):
        t = Table(title=text(f"sweep {title} (95 % CI)"))
        for h in head:
            t.add_column(text(h))
        for r in rows:
            t.add_row(*(text(c) for c in r))
        con.print(t)
    con.print(styled("[dim]{f}[/]", f=legend_footnote()))
    if rep.timing_verdicts_off:
        con.print(styled("[yellow]{w}[/]", w=rep.timing_verdicts_off))
    err = err_console()
    phase("write")
    for p in rep.problems:
        err.print(styled("[yellow]skipped:[/] {p}", p=p))
    for n in rep.notes:
        err.print(styled("[yellow]note:[/] {n}", n=n))
    for row in rep.rows:
        for msg in row.error_messages:
            err.print(styled("[red]{m} error[/] {msg}", m=row.method, msg=msg))
    if args.csv:
        err.print(styled("CSV → {p}", p=write_csv(rep, args.csv)))
    if args.markdown:
        write_text(Path(args.markdown), to_markdown(rep) + "\n")
        err.print(styled("Markdown → {p}", p=args.markdown))
    if args.png:
        for path in write_pngs(rep, args.png):
            err.print(styled("PNG → {p}", p=path))
    return 0
