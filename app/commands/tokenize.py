"""``tokenforge tokenize "text"``: a string's canonical tokenization with visible boundaries, the
exact number of tokenizations, uniform samples and distance-k neighbours — no search, no model
weights (only the tokenizer is loaded)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional

from rich.text import Text

from engine.inert import json_text
from app.inert import console as inert_console, styled
from app.commands.common import add_model_args, err_console, fail, guard
from app.interrupt import cancel_token, phase

# alternating token backgrounds: boundaries stay visible even between spaces
_STYLES = ("black on bright_cyan", "black on bright_yellow")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "tokenize", help="inspect a string's tokenizations: canonical, count, samples, neighbours",
        description="Show the canonical tokenization of TEXT with token boundaries, the exact "
                    "number of tokenizations, uniform samples and the neighbours at distance K "
                    "(tokenizations with exactly K (end-offset, token) edges not in the canonical "
                    "one). Only the tokenizer is loaded.")
    p.add_argument("text", help="the string to tokenize ('-' reads standard input)")
    p.add_argument("--count", action="store_true",
                   help="print only the exact number of tokenizations")
    p.add_argument("--sample", type=int, default=0, metavar="N",
                   help="draw N tokenizations uniformly at random")
    p.add_argument("--neighbours", "--neighbors", type=int, default=None, metavar="K",
                   dest="neighbours", help="list the tokenizations at distance exactly K")
    p.add_argument("--limit", type=int, default=20,
                   help="at most this many neighbours (a uniform sample when there are more)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (default 0)")
    p.add_argument("--dot", metavar="FILE", default=None,
                   help="write the tokenization diagram as Graphviz DOT")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (canonical, count, samples, neighbours)")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="write that JSON object to FILE (atomically)")
    add_model_args(p)


def _tokens_text(vocab: Any, ids: list[int], colour: bool = True) -> Text:
    """Tokens in alternating colours; without colour (pipes, NO_COLOR) separated by '│'."""
    from engine.advtok.tokenview import token_label

    if not colour:
        return Text("│" + "│".join(token_label(vocab, t) for t in ids) + "│")
    t = Text()
    for k, tid in enumerate(ids):
        t.append(token_label(vocab, tid), style=_STYLES[k % 2])
    return t


def _ids_text(ids: list[int]) -> Text:
    return Text(" ".join(str(i) for i in ids), style="dim")


def _read_text(arg: str) -> str:
    if arg == "-":  # the text's own bound (+ a final newline), never an unbounded read
        from engine.advtok.config import MAX_TEXT_BYTES
        from engine.bounded_json import read_stream

        data = read_stream(sys.stdin.buffer, "standard input", MAX_TEXT_BYTES + 1)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            from engine.errors import InputError

            raise InputError(f"standard input is not valid UTF-8 (byte {e.start})") from None
        return text[:-1] if text.endswith("\n") else text
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in arg):  # argv bytes that were not UTF-8
        import os

        raw = os.fsencode(arg)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            from engine.errors import InputError

            raise InputError(f"the text argument is not valid UTF-8 (byte {e.start})") from None
    return arg


def _load_tokenizer(args: argparse.Namespace, err: Any) -> Any:
    """Only the tokenizer: a GGUF never converted is read as it is (no weights de-quantized)."""
    from engine.lm.model import load_tokenizer

    def on_load(p: Any) -> None:  # a warning from loading is reported once
        if p.metrics.get("warning"):
            err.print(f"warning: {p.metrics['warning']}", style="yellow", markup=False,
                      highlight=False)

    phase("load")
    with err.status(styled("loading the tokenizer of {m}…", m=args.model)):
        return load_tokenizer(args.model, trust_remote_code=args.trust_remote_code,
                              progress=on_load, cancel=cancel_token(), convert=False)


def _write_files(args: argparse.Namespace, rep: Any, mdd: Any, err: Any) -> Optional[int]:
    """--dot, --out and --json (standard output); an exit code when the command ends here."""
    from engine.atomic import write_text

    if args.dot:
        write_text(args.dot, mdd.to_dot(highlight=rep.canonical))  # a refusal: StorageError
        err.print(styled("[dim]wrote {p}[/]", p=args.dot))
    if not (args.json or args.out):
        return None
    payload = json.dumps(rep.to_json(mdd.vocab), ensure_ascii=False, indent=2) + "\n"
    if args.out:
        write_text(args.out, payload)
        err.print(styled("[dim]wrote {p}[/]", p=args.out))
    if args.json:
        sys.stdout.write(json_text(rep.to_json(mdd.vocab), indent=2) + "\n")  # for a terminal
        return 0
    return None


def _print_report(text: str, rep: Any, vocab: Any) -> None:
    """The human view: the text, its canonical tokens, the count, samples and neighbours."""
    out = inert_console(soft_wrap=True)
    colour = out.color_system is not None

    def toks(ids: list[int]) -> Text:
        return _tokens_text(vocab, ids, colour)

    out.print(Text.assemble(("text ", "bold"), repr(text),
                            (f"  {rep.n_bytes} bytes · {rep.n_edges} edges · {vocab.kind} "
                             f"vocabulary", "dim")))
    out.print(Text.assemble((f"canonical ({len(rep.canonical)} tokens) ", "bold"),
                            toks(rep.canonical)))
    out.print(Text.assemble("  ids ", _ids_text(rep.canonical)))
    out.print(Text.assemble(("tokenizations ", "bold"), f"{rep.count:,}",
                            (f"  (shortest {len(rep.shortest)} tokens)", "dim")))
    if rep.samples:
        out.print(Text(f"uniform samples (seed {rep.seed})", style="bold"))
        for k, s in enumerate(rep.samples, 1):
            out.print(Text.assemble(f"{k:>3}. ", toks(s), "  ", _ids_text(s)))
    if rep.neighbours_k is not None:
        how = (f"a uniform sample of {len(rep.neighbours)}" if rep.neighbours_sampled
               else f"all {len(rep.neighbours)}")
        out.print(Text(f"neighbours at distance {rep.neighbours_k}: {rep.neighbours_total:,} "
                       f"({how})", style="bold"))
        for k, v in enumerate(rep.neighbours, 1):
            out.print(Text.assemble(f"{k:>3}. ", toks(v), "  ", _ids_text(v)))


@guard
def run(args: argparse.Namespace) -> int:
    """Load the tokenizer, build the report (sample, neighbours and limit are checked against
    TokenizeConfig's declared bounds, by app/argcheck.py and the engine), write, print."""
    from engine.advtok.tokenview import inspect_text

    text = _read_text(args.text)
    if not text:
        return fail("empty text: give a string to tokenize")
    err = err_console()
    tok = _load_tokenizer(args, err)
    phase("tokenize")
    rep, mdd = inspect_text(tok, text, samples=args.sample, neighbours=args.neighbours,
                            limit=args.limit, seed=args.seed, progress=lambda p: phase(p.phase),
                            cancel=cancel_token())
    phase("write")  # a press from here on: the finished result is still written, exit 130
    if mdd.vocab.cache_note:
        err.print(f"warning: {mdd.vocab.cache_note}", style="yellow", markup=False,
                  highlight=False)
    code = _write_files(args, rep, mdd, err)
    if code is not None:
        return code
    if args.count and not args.sample and args.neighbours is None:
        inert_console(soft_wrap=True).print(str(rep.count))
        return 0
    _print_report(text, rep, mdd.vocab)
    return 0
