"""Dataset runs of ``tokenforge attack`` (``--dataset FILE --out results.jsonl --judge …``, also
sharded under ``accelerate launch``) and the subcommands that work on their results:
``attack judge`` (judge later, elsewhere), ``attack report`` (ASR tables), ``attack merge``."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from app.inert import InertArgumentParser, console as inert_console, styled, text
from app.commands.common import (add_model_args, attack_config, err_console, fail,
                                 guard, load_lm, read_attack_results)
from app.interrupt import cancel_token, phase, run_command
from app.commands.attack_progress import LiveProgress, row_line

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

SUBCOMMANDS = ("judge", "report", "merge", "replay")


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    """Options of ``attack --dataset`` (registered on the attack parser)."""
    p.add_argument("--judge", metavar="NAME[,NAME…]", default="refusal",
                   help="judges of the samples: refusal (default), target, or KIND:MODEL")
    p.add_argument("--columns", metavar="FIELD=COL,…", default=None,
                   help="map benchmark columns: request=…,response=…,category=…,id=…")
    p.add_argument("--judge-batch", type=int, default=8, metavar="N",
                   help="samples per judge-model batch (verdicts do not depend on it)")
    add_judge_settings(p)
    p.add_argument("--default-response", default="Sure, here is",
                   help="target for rows without one (HarmBench has no target column)")


def add_judge_settings(p: argparse.ArgumentParser) -> None:
    """The model judges' own settings (DatasetRunConfig; recorded with every verdict)."""
    p.add_argument("--rubric-max-tokens", type=int, default=None, metavar="N",
                   help="tokens the rubric grader may write (default 384)")
    p.add_argument("--shieldgemma-policies", default=None, metavar="P[,P…]",
                   help="ShieldGemma policies: dangerous, harassment, hate, sexual (default all)")


def judge_settings(args: argparse.Namespace) -> Any:
    """The judge settings of the command line, checked (DatasetRunConfig)."""
    from engine.advtok.config import DatasetRunConfig

    cfg = DatasetRunConfig(judge_batch=args.judge_batch)
    if getattr(args, "rubric_max_tokens", None) is not None:
        cfg.rubric_max_tokens = args.rubric_max_tokens
    if getattr(args, "shieldgemma_policies", None) is not None:
        cfg.shield_policies = tuple(args.shieldgemma_policies)
    return cfg.validate()


# ---------------------------------------------------------------------- processes
def parallel_state(args: argparse.Namespace) -> Any:
    """This process's rank under a multi-process launch (accelerate's PartialState over the
    torchrun environment ``accelerate launch --multi_gpu`` sets up), else one process. Each rank
    loads its own model: on its own GPU, or on the CPU with ``--device cpu`` (gloo)."""
    from engine.advtok.evalrun import Parallel
    from engine.launch import launch_shortfall

    short = launch_shortfall()
    if short is not None:  # one line, whatever the terminal's width
        err_console().print(short, style="yellow", markup=False, highlight=False, soft_wrap=True)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Parallel()
    import torch
    from accelerate import PartialState

    dev = getattr(args, "device", "auto")
    cpu = dev == "cpu" or (dev == "auto" and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    if state.num_processes <= 1:
        return Parallel()
    if dev == "auto":
        args.device = "cpu" if cpu else str(state.device)
    return Parallel(rank=state.process_index, world=state.num_processes,
                    barrier=state.wait_for_everyone)


# ---------------------------------------------------------------------- dataset run
def _say(con: Console, msg: str, style: str = "yellow") -> None:
    con.print(msg, style=style, markup=False, highlight=False)


def run_dataset(lm: LoadedModel, args: argparse.Namespace, rows_path: Path, out_path: Path, *,
                console: Optional[Console] = None, cancel: Any = None, par: Any = None,
                on_row: Optional[Callable[[int, int, dict[str, Any]], None]] = None) -> Any:
    """Read the benchmark file, build the judges, run this process's pending rows."""
    from engine.advtok.datasets import parse_columns, read_benchmark, system_for
    from engine.advtok.evalrun import run_rows
    from engine.advtok.judges import make_judges

    con = console or err_console()
    bench = read_benchmark(rows_path, parse_columns(args.columns), args.default_response)
    for msg in bench.problems:
        _say(con, f"{rows_path}: {msg}")
    judges = make_judges(args.judge, loader=lambda spec: _load_judge_model(args, spec),
                         settings=judge_settings(args))
    default_system = None if args.template_system else args.system
    rank = f"[{par.rank}] " if par is not None and par.world > 1 else ""
    live = LiveProgress(con, rank)

    def row_done(i: int, n: int, rec: dict[str, Any]) -> None:
        con.print(text(row_line(i, n, rec, [j.id for j in judges], live.rp, rank)),
                  highlight=False, soft_wrap=True)
        phase(f"row-done-{i}")
        if on_row is not None:
            on_row(i, n, rec)

    with live:
        summ = run_rows(lm, bench, lambda r: attack_config(args, r.request, r.response,
                                                         system_for(r, default_system)),
                        judges, out_path, par=par, cancel=cancel, on_row=row_done,
                        system=default_system, progress=live,
                        on_error=lambda m: con.print(styled("[bold red]error:[/] {m}", m=m),
                                                     soft_wrap=True))
    for n in summ.notes:
        _say(con, n)
    summ.failed = [f"{m}" for m in summ.failed]
    summ.problems = list(bench.problems)    # type: ignore[attr-defined]
    return summ


def _load_judge_model(args: argparse.Namespace, spec: str) -> Any:
    from engine.lm.model import load_model
    from engine.lm.threads import apply

    apply(getattr(args, "threads", None))
    return load_model(spec, device=args.device, dtype=args.dtype,
                      trust_remote_code=args.trust_remote_code, cancel=cancel_token())


def check_judges(spec: Optional[str]) -> None:
    """An explicitly empty ``--judge ""`` selects nothing: an error, not the default judge."""
    from engine.advtok.judges import parse_judges
    from engine.errors import InputError

    if spec is not None and not spec.strip():
        raise InputError("--judge selects no judge", hint="e.g. --judge refusal,target")
    parse_judges(spec)


def check_settings_before_load(args: argparse.Namespace) -> None:
    """Refuse a resume whose attack settings or system prompt differ from the finished rows'
    before any model loads (the model, template and judges are checked once they are loaded)."""
    from dataclasses import asdict

    from engine.advtok.fingerprint import check_resume, run_settings
    from engine.advtok.records import read_results, shard_files

    if not shard_files(args.out):
        return
    settings = run_settings(attack=asdict(attack_config(args, "x", "x")),
                            system=None if args.template_system else args.system, judges=[])
    del settings["judges"]      # judge ids carry their loaded model's spec: checked after load
    check_resume(read_results(args.out).records, settings, args.out)


def run_dataset_cmd(args: argparse.Namespace) -> int:
    """``attack --dataset FILE --out results.jsonl``: one process, or one rank of a launch.
    Ctrl+C stops after the rows already finished (each is on disk): exit 130."""
    from engine.advtok.datasets import parse_columns, read_benchmark
    from engine.advtok.records import merge_results, shard_files

    if args.request or args.response:
        return fail("--dataset reads requests from the file; drop --request/--response")
    if not args.out:
        return fail("--dataset needs --out results.jsonl (finished rows are appended there)")
    rows = Path(args.dataset)
    if not rows.exists():  # a FIFO or a device exists: read_benchmark names what it is
        return fail(f"dataset file not found: {rows}")
    attack_config(args, "x", "x")   # validate the shared settings before loading the model
    parse_columns(args.columns)
    check_judges(args.judge)
    judge_settings(args)            # the judges' declared bounds
    check_settings_before_load(args)
    usable = read_benchmark(rows, parse_columns(args.columns), args.default_response)
    if not usable.rows:  # every row rejected: nothing to run is a failed run (exit 2)
        for msg in usable.problems:
            _say(err_console(), f"{rows}: {msg}")
        return fail(f"{rows}: no usable row ({len(usable.problems)} problem(s) above)")
    par = parallel_state(args)
    lm = load_lm(args)
    err = err_console()
    phase("rows")
    summ = run_dataset(lm, args, rows, Path(args.out), console=err, cancel=cancel_token(), par=par)
    tag = f"[{par.rank}/{par.world}] " if par.world > 1 else ""
    err.print(f"{tag}{summ.done} rows done, {summ.skipped} already finished, "
              f"{len(summ.failed)} failed, {len(summ.problems)} file problems"
              + (" · interrupted" if summ.interrupted else ""), highlight=False, markup=False)
    if summ.interrupted or cancel_token().cancelled:
        return 130
    par.barrier()               # every rank finished: rank 0 folds the shards into --out
    if par.rank == 0 and len(shard_files(args.out)) > 1:
        n, _ = merge_results(Path(args.out))
        err.print(f"merged {n} rows into {args.out}", highlight=False, markup=False)
    return 2 if summ.failed else 0


# ---------------------------------------------------------------------- subcommands
def build_sub_parser() -> argparse.ArgumentParser:
    p = InertArgumentParser(prog="tokenforge attack",
                                description="Work on the results of an AdvTok dataset run.")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    j = sub.add_parser("judge", help="judge (or re-judge) the samples of a results file")
    j.add_argument("results")
    j.add_argument("--judge", required=True, metavar="NAME[,NAME…]")
    j.add_argument("--out", default=None, help="write here instead of rewriting RESULTS")
    j.add_argument("--judge-batch", type=int, default=8, metavar="N",
                   help="samples per judge-model batch (verdicts do not depend on it)")
    add_judge_settings(j)
    add_model_args(j)
    r = sub.add_parser("report", help="ASR canonical vs adversarial per judge and category")
    r.add_argument("results")
    r.add_argument("--markdown", metavar="FILE", default=None)
    r.add_argument("--csv", metavar="FILE", default=None)
    r.add_argument("--png", metavar="DIR", default=None)
    r.add_argument("--k", default=None, metavar="K[,K…]", help="ASR@k values (default 1 and N)")
    r.add_argument("--judges", default=None, help="only these judges (default: all recorded)")
    r.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    m = sub.add_parser("merge", help="fold the shard files of a sharded run into RESULTS")
    m.add_argument("results")
    from app.argcheck import add_force

    add_force(j)
    add_force(r)
    from app.commands.attack_replay import register_replay

    register_replay(sub)
    from app.cache_check import add_flag, refuse_flag

    add_flag(j)                          # judge and replay load models from the cache
    add_flag(sub.choices["replay"])
    refuse_flag(r, "attack report")      # these read results files only
    refuse_flag(m, "attack merge")
    return p


def main(argv: Sequence[str]) -> int:
    from app.argcheck import check_args
    from engine.errors import EngineError

    from app.cache_check import at_start

    parser = build_sub_parser()
    args = parser.parse_args(list(argv))
    at_start(args)  # stale temporary files; --verify-cache where the action reads the cache
    try:  # the shared validation layer, as for every other command
        check_args(args, parser, command=f"attack {args.action}")
    except EngineError as e:
        return fail(str(e), e.hint)
    return run_command(lambda: _dispatch(args))


@guard
def _dispatch(args: argparse.Namespace) -> int:
    if args.action == "report":
        return report_cmd(args)
    if args.action == "judge":
        return judge_cmd(args)
    if args.action == "merge":
        return merge_cmd(args)
    from app.commands.attack_replay import replay_cmd

    return replay_cmd(args)


def merge_cmd(args: argparse.Namespace) -> int:
    from engine.advtok.records import merge_results

    read_attack_results(args.results)
    phase("write")
    n, _ = merge_results(args.results)
    err_console().print(f"merged {n} rows into {args.results}", highlight=False, markup=False)
    return 0


def judge_cmd(args: argparse.Namespace) -> int:
    """In place it holds the results locks throughout (engine.advtok.evalrun.rejudge_file): a
    run still writing the file is named at once and nothing changes; --out judges a snapshot."""
    from engine.advtok.evalrun import rejudge_file
    from engine.advtok.judges import make_judges
    from engine.advtok.records import shard_files
    from engine.errors import InputError

    check_judges(args.judge)
    settings = judge_settings(args)  # the judges' declared bounds
    if not shard_files(args.results):
        raise InputError(f"results file not found: {args.results}")
    built: list[Any] = []

    def judges() -> list[Any]:
        built[:] = make_judges(args.judge, loader=lambda spec: _load_judge_model(args, spec),
                               settings=settings)
        return built

    phase("judge")
    with LiveProgress(err_console()) as live:          # a stop: the file as it was
        res = rejudge_file(args.results, judges, args.out, cancel=cancel_token(), progress=live)
    for n in res.notes:
        _say(err_console(), n)
    err_console().print(f"judged {res.rows} rows with {', '.join(j.id for j in built)} → {res.dest}",
                        highlight=False, markup=False)
    return 0


def _rich_table(title: str, headers: list[str], rows: list[list[str]]) -> Table:
    """Cells as Text: judge names and categories come from files and are never markup."""
    t = Table(title=title, header_style="bold", show_lines=False)
    for h in headers:
        t.add_column(h, justify="left" if h in ("judge", "category", "metric") else "right",
                     overflow="fold")
    for r in rows:
        t.add_row(*(text(c) for c in r))
    return t


def print_report(rep: Any, stream: Any = None) -> None:
    """The report on standard output: rich tables on a terminal; the plain fixed-width text of
    engine.advtok.asr_render otherwise (piped, redirected), so no cell is cut or wrapped."""
    from engine.advtok.asr_render import detail, footer, headline, title, to_text

    stream = stream or sys.stdout
    if not stream.isatty():
        stream.write(to_text(rep))
        stream.flush()
        return
    out = inert_console(file=stream)
    out.print(Text(title(rep), style="bold"))
    out.print(_rich_table("ΔASR (adversarial − canonical), 95 % interval", *headline(rep)))
    out.print(_rich_table("rates, intervals and bounds", *detail(rep)))
    for line in footer(rep):
        out.print(Text(line))


def parse_ks(spec: Optional[str]) -> Optional[list[int]]:
    from engine.errors import InputError

    if spec is None:
        return None
    try:
        ks = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--k {spec!r}: expected integers like 1,8") from None
    if not ks:
        raise InputError(f"--k {spec!r} selects no k", hint="e.g. --k 1,8")
    if any(k < 1 for k in ks):
        raise InputError("--k values must be ≥ 1")
    return ks


def report_cmd(args: argparse.Namespace) -> int:
    """Errors (exit 2, one message) before anything is printed or written: an unknown judge
    or an empty judge selection, a k beyond the samples per side, no rows."""
    from engine.advtok.asr_render import write_png, write_tables
    from engine.advtok.asr_report import build_report

    ks = parse_ks(args.k)
    rr = read_attack_results(args.results)
    judges = args.judges.split(",") if args.judges is not None else None
    rep = build_report(rr.records, judges=judges, ks=ks, seed=args.seed)
    print_report(rep)
    err = err_console()
    phase("write")
    for path in write_tables(rep, markdown=args.markdown, csv_path=args.csv):
        err.print(f"wrote {path}", markup=False)
    if args.png:
        err.print(f"wrote {write_png(rep, args.png)}", markup=False)
    return 0


def route(argv: Sequence[str]) -> Optional[list[str]]:
    """``… attack ACTION …`` -> the argv for :func:`main` (options before ``attack`` kept), else
    None (a plain attack run)."""
    argv = list(argv)
    if "attack" not in argv:
        return None
    i = argv.index("attack")
    if i + 1 < len(argv) and argv[i + 1] in SUBCOMMANDS:
        return [argv[i + 1]] + argv[i + 2:] + argv[:i]
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
