"""Pieces every headless command shares: model options, loading with a progress line, errors."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from rich.console import Console

from engine.errors import EngineError
from engine.lm.config import ENGINE_PATHS  # torch-free: --help loads no torch

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

EXIT_USAGE = 2


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="default",
                   help="'default' (bundled SmolLM2-135M-Instruct), a directory, a .gguf file, "
                        "or a Hugging Face id already in the local cache")
    g.add_argument("--device", default="auto", help="auto, cpu, mps, cuda or cuda:N")
    g.add_argument("--dtype", default="auto", help="auto (fp32 on CPU), float32, float16, bfloat16")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model repository's own Python code to run (off by default)")
    g.add_argument("--engine-path", choices=ENGINE_PATHS, default="fast",
                   help="fast: lean forward where supported (exact); standard: the HF forward; "
                        "int8: lean forward with weight-only int8 decode (INEXACT, faster; "
                        "scoring stays exact)")
    g.add_argument("--context-size", type=int, default=None, metavar="N",
                   help="use at most N tokens of context (default: the model's window)")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads (default: the cores divided by the processes of this run "
                        "on this machine; equal counts give bit-identical results)")


def err_console() -> Console:
    """stderr for notes and errors, through the output layer (app/inert.py)."""
    from app.inert import console

    return console(stderr=True)


def fail(message: str, hint: str = "", code: int = EXIT_USAGE) -> int:
    """Print one clear error line (the hint, if any, on the same line) to stderr; return the exit
    code. Message and hint are data (paths, values, file contents): shown inert, never markup."""
    from app.inert import styled

    c = err_console()
    line = styled("[bold red]error:[/] {m}", m=message)
    if hint:
        line.append_text(styled(" [dim]({h})[/]", h=hint))
    c.print(line, soft_wrap=True)
    return code


def load_lm(args: argparse.Namespace) -> Any:
    """Load the model named by the args with a transient status line. Raises EngineError, and
    Cancelled when Ctrl+C lands during the load (it is checked between weight tensors)."""
    from app.inert import styled
    from app.interrupt import cancel_token, phase
    from engine.lm.model import load_model
    from engine.lm.threads import apply

    c = err_console()
    threads = apply(getattr(args, "threads", None))
    phase("load")
    with c.status(styled("loading {m}…", m=args.model)) as status:
        def progress(p: Any) -> None:
            if "tensors" in p.metrics:
                phase("load-weights")
            status.update(styled("{ph} {m}", ph=f"[{p.phase}]", m=p.message))

        lm = load_model(args.model, device=args.device, dtype=args.dtype,
                        trust_remote_code=args.trust_remote_code, progress=progress,
                        cancel=cancel_token())
    set_engine_path(lm, getattr(args, "engine_path", "fast"))
    limit_context(lm, getattr(args, "context_size", None))
    c.print(styled("[dim]{d} · loaded in {s:.1f} s · {t} ({w})[/]", d=lm.describe(), s=lm.load_s,
                   t=f"{threads.threads} thread{'s' if threads.threads != 1 else ''}",
                   w=threads.why))
    for note in lm.notes:  # e.g. a damaged cache entry moved aside and rebuilt
        c.print(f"warning: {note}", style="yellow", markup=False, highlight=False)
    return lm


def set_engine_path(lm: LoadedModel, path: str) -> None:
    """Choose the forward implementation (fast path where the architecture supports it)."""
    lm.engine_path = path


def limit_context(lm: LoadedModel, n: Any) -> None:
    """A profile's or flag's context size: never more than the model's own window."""
    from engine.bounds import bound_of
    from engine.lm.config import ModelConfig

    if n is None:
        return
    bound_of(ModelConfig, "context_size").check("--context-size", n)
    lm.context_length = min(int(lm.context_length), int(n))


def write_export(dest: str, kind: str, result: Any, *, settings: dict[str, Any],
                 lm: Any, cancelled: bool, started_at: float) -> None:
    """A headless job's ``--json``: the one export envelope the TUI's exports use
    (engine/export.py: format, kind, state, model, settings, times, result), written atomically,
    or to standard output when ``dest`` is "-"."""
    import json
    import sys
    import time

    from app.inert import styled
    from engine.export import job_document, write_job_json
    from engine.inert import json_text

    doc = job_document(kind, result, settings=settings, model=getattr(lm, "name", None),
                       state="cancelled" if cancelled else "finished", started_at=started_at,
                       finished_at=time.time())
    if dest == "-":
        sys.stdout.write(json_text(doc, indent=2) + "\n")  # a terminal may be reading
    else:
        from engine.errors import StorageError

        try:
            write_job_json(dest, doc)
        except StorageError as e:  # the job has run: its result is on screen, say so
            raise type(e)(f"{e}; the result is printed above", hint=e.hint) from None
        err_console().print(styled("[dim]wrote {p}[/]", p=dest))


def guard(fn: Any) -> Any:
    """Decorator for run(args): EngineError -> one line + exit 2; a job stopped by Ctrl+C that
    had nothing to show (Cancelled) -> exit 130. Ctrl+C itself is app/interrupt.py's."""
    import functools

    @functools.wraps(fn)
    def wrapper(args: argparse.Namespace) -> int:
        from app.commands import profile_args
        from engine.progress import Cancelled

        try:
            profile_args.apply(args)
            return int(fn(args) or 0)
        except EngineError as e:
            return fail(str(e), e.hint)
        except Cancelled:
            err_console().print("[yellow]interrupted[/]")
            return 130
    return wrapper


# ---------------------------------------------------------------------- attack helpers
_FROM_ARGS: Any = object()


def attack_config(args: argparse.Namespace, request: str, response: str,
                  system: Any = _FROM_ARGS) -> Any:
    """AttackConfig from the attack options (validated: bad settings raise InputError); shared
    by the single-request run and the dataset run."""
    from engine.advtok.search import AttackConfig

    if system is _FROM_ARGS:
        system = None if args.template_system else args.system
    return AttackConfig(
        request=request, response=response, system=system, iters=args.iters,
        max_neighbours=args.max_neighbours, init=args.init, distance4=args.distance4,
        include_merges=args.merges, stochastic=args.stochastic, temperature=args.temperature,
        length_norm=not args.no_length_norm, samples=args.samples,
        sample_max_new_tokens=args.sample_tokens, sample_temperature=args.sample_temperature,
        sample_repetition_penalty=args.sample_repetition_penalty,
        seed=args.seed, max_request_chars=args.max_request_chars, batch_cap=args.batch_cap,
        allow_plain_template=args.plain_template).validate()


def read_attack_results(results: str) -> Any:
    """The finished rows of an attack results file (and its shards); its notes on stderr.
    InputError when there is no such file or no finished row."""
    from engine.advtok.records import read_results, shard_files
    from engine.errors import InputError

    if not shard_files(results):
        raise InputError(f"results file not found: {results}")
    rr = read_results(results)
    for n in rr.notes:
        err_console().print(n, style="yellow", markup=False, highlight=False)
    if not rr.records:
        raise InputError(f"{results}: no finished rows")
    return rr
