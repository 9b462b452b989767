"""Dataset runs: every benchmark row gets an AdvTok search, samples with both tokenizations and
verdicts from each judge, written as one replayable JSON line the moment it is finished. Rows
already in the results file or any of its shards are skipped (resume by row id). With several
processes each takes every world-th pending row and appends to its own shard."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from engine.advtok.datasets import BenchmarkFile, BenchRow
from engine.advtok.fingerprint import check_resume
from engine.advtok.judges import JudgeItem, judge_records
from engine.advtok.records import (SCHEMA, model_info, prompt_ids, read_lines, read_results,
                                   shard_path, template_info)
from engine.errors import EngineError, InputError
from engine.progress import CancelToken, ProgressFn, check, report

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


@dataclass
class RunSummary:
    total: int = 0                  # rows in the file (after the file's own problems)
    done: int = 0                   # rows finished by this process in this run
    skipped: int = 0                # rows already finished earlier (any shard)
    assigned: int = 0               # rows this process was given
    failed: list[str] = field(default_factory=list)    # "line N: message"
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False
    out: str = ""


@dataclass
class Parallel:
    """This process's place in a (possibly one-process) run. ``barrier`` waits for all ranks."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = lambda: None


def judge_samples(judges: Sequence[Any], row: BenchRow, samples: list[dict[str, Any]],
                  spent: Optional[dict[str, float]] = None,
                  progress: Optional[ProgressFn] = None, side: str = "") -> None:
    """Attach each judge's verdict to every sample dict (in place), judging each side batched;
    each judge's seconds are added to ``spent``. Judges see the behaviour and its context
    apart (JudgeItem). Reports phase "judge" (judge i of n, the side) before each judge runs."""
    if not samples:
        return
    items = [JudgeItem(request=row.behavior or row.request, response=s["text"],
                       target=row.response, category=row.category, context=row.context)
             for s in samples]
    for i, j in enumerate(judges, 1):
        report(progress, "judge", i, len(judges),
               f"{j.id} ({side + ', ' if side else ''}{len(samples)} samples)", judge=j.id, side=side)
        t = time.perf_counter()
        verdicts = j.judge(items)
        if spent is not None:
            spent[j.id] = spent.get(j.id, 0.0) + time.perf_counter() - t
        for s, v in zip(samples, verdicts):
            s.setdefault("verdicts", {})[j.id] = v.to_dict()


def build_record(lm: LoadedModel, row: BenchRow, cfg: Any, res: Any, bench: BenchmarkFile,
                 judge_ids: list[str], settings: Optional[dict[str, Any]] = None,
                 vocab: Any = None) -> dict[str, Any]:
    """The replayable JSON record of one finished row, with the run's settings fingerprint and
    the tokenizer's vocabulary hash (the token ids mean something only under that tokenizer:
    the TUI's drill-down draws a row's lattice only when the loaded one has the same)."""
    from engine.advtok.fingerprint import fingerprint

    from engine.lm.templates import split_template

    chunks = split_template(lm.tokenizer, cfg.system)
    d = res.to_dict()
    d.pop("trace", None)            # per-iteration detail stays in the curve; keeps lines small
    return {
        "schema": SCHEMA, "id": row.id, "key": row.id, "line": row.line,
        "category": row.category, **d,
        "prompt_ids": {"canonical": prompt_ids(chunks, cfg, res.canonical_ids),
                       "adversarial": prompt_ids(chunks, cfg, res.best_ids),
                       "response": chunks.response_ids(cfg.response)},
        "model": model_info(lm), "template": template_info(lm.tokenizer, chunks),
        **({"tokenizer": {"vocab_hash": vocab.hash, "kind": vocab.kind}} if vocab is not None else {}),
        "behavior": row.behavior or row.request, "context": row.context,
        "seed": cfg.seed, "judges": list(judge_ids),
        "dataset": {"path": bench.path, "sha256": bench.sha256, "layout": bench.layout},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **({"settings": settings, "fingerprint": fingerprint(settings)} if settings else {}),
    }


def pending_rows(bench: BenchmarkFile, done: set[str], par: Parallel) -> list[BenchRow]:
    """This rank's share of the rows not finished yet (same split on every rank)."""
    todo = [r for r in bench.rows if r.id not in done]
    return todo[par.rank::par.world]


def run_rows(lm: LoadedModel, bench: BenchmarkFile, make_cfg: Callable[[BenchRow], Any],
             judges: Sequence[Any], out: Path | str, **kw: Any) -> RunSummary:
    """``_run_rows`` holding the lock of this rank's results file (engine.locks): a second run
    on the same ``--out`` (and rank) stops at once naming the holder, instead of redoing rows."""
    from engine.locks import FileLock

    par = kw.get("par") or Parallel()
    dest = shard_path(Path(out), par.rank, par.world)
    with FileLock(dest, f"results file {dest}"):
        return _run_rows(lm, bench, make_cfg, judges, out, **kw)


def _run_rows(lm: LoadedModel, bench: BenchmarkFile, make_cfg: Callable[[BenchRow], Any],
             judges: Sequence[Any], out: Path | str, *, par: Optional[Parallel] = None,
             cancel: Any = None, on_row: Optional[Callable[[int, int, dict[str, Any]], None]] = None,
             on_error: Optional[Callable[[str], None]] = None,
             progress: Any = None, system: Any = ...) -> RunSummary:
    """Run this rank's pending rows of ``bench``; append each finished record to this rank's
    file. A cancel stops after the current row's search returns; that row is not written (it is
    redone on resume). ``on_row(i, n, record)`` after each written row. Before the first row is
    searched, the run's settings (engine.advtok.fingerprint; ``system`` is the run's default
    system prompt, else the first row's) are checked against the rows already finished:
    InputError naming the setting when they differ."""
    from engine.advtok.search import run_attack
    from engine.advtok.vocab import load_vocab
    from engine.atomic import append_line

    par = par or Parallel()
    out = Path(out)
    summ = RunSummary(total=len(bench.rows), out=str(shard_path(out, par.rank, par.world)))
    dest = shard_path(out, par.rank, par.world)
    if dest.is_file():              # only this rank's own file is repaired (others may be mid-write)
        summ.notes.extend(read_lines(dest, repair=True)[1])
    prior = read_results(out)
    summ.notes.extend(n for n in prior.notes if "half-written" not in n)
    summ.skipped = sum(1 for r in bench.rows if r.id in prior.ids)
    par.barrier()                   # every rank has read the same finished set before any writes
    mine = pending_rows(bench, prior.ids, par)
    summ.assigned = len(mine)
    vocab = load_vocab(lm.tokenizer)
    if vocab.cache_note:
        summ.notes.append(vocab.cache_note)
    judge_ids = [j.id for j in judges]
    settings: Optional[dict[str, Any]] = None
    for i, row in enumerate(mine, 1):
        if cancel is not None and cancel.cancelled:
            summ.interrupted = True
            break
        report(progress, "row", i, len(mine), f"row {i}/{len(mine)}", row_id=row.id, line=row.line)

        def failed(e: EngineError) -> None:
            msg = f"line {row.line}: {e}"
            summ.failed.append(msg)
            if on_error is not None:
                on_error(msg)

        try:
            cfg = make_cfg(row)
        except EngineError as e:
            failed(e)
            continue
        if settings is None:         # the first row with valid settings: before any search
            settings = _settings(lm, cfg, judges, cfg.system if system is ... else system)
            check_resume(prior.records, settings, out)
        try:
            res = run_attack(lm, cfg, cancel=cancel, vocab=vocab, progress=progress)
        except EngineError as e:
            failed(e)
            continue
        except (TypeError, UnicodeError) as e:  # text a tokenizer cannot encode: this row only
            failed(InputError(f"the tokenizer cannot encode this row ({type(e).__name__}: {e})"))
            continue
        if res.stop_reason == "cancelled" or (cancel is not None and cancel.cancelled):
            summ.interrupted = True
            break
        spent: dict[str, float] = {}
        judge_samples(judges, row, res.adversarial_samples, spent, progress, "adversarial")
        judge_samples(judges, row, res.canonical_samples, spent, progress, "canonical")
        rec = build_record(lm, row, cfg, res, bench, judge_ids, settings, vocab)
        rec["judge_info"] = judge_records(judges, spent)
        append_line(dest, json.dumps(rec, ensure_ascii=False))
        summ.done += 1
        report(progress, "row-done", i, len(mine), f"row {i}/{len(mine)} written", row_id=row.id)
        if on_row is not None:
            on_row(i, len(mine), rec)
    return summ


def _settings(lm: LoadedModel, cfg: Any, judges: Sequence[Any], system: Optional[str]) -> dict[str, Any]:
    from dataclasses import asdict

    from engine.advtok.fingerprint import run_settings
    from engine.lm.templates import split_template

    return run_settings(attack=asdict(cfg), system=system, judges=judges, model=model_info(lm),
                        template=template_info(lm.tokenizer, split_template(lm.tokenizer, cfg.system)))


def rejudge(records: list[dict[str, Any]], judges: Sequence[Any], *,
            cancel: Optional[CancelToken] = None,
            progress: Optional[ProgressFn] = None) -> list[dict[str, Any]]:
    """Add (or replace) the verdicts of ``judges`` on existing records (judging later, on another
    machine). Records are changed in place and returned; a cancel raises Cancelled between rows.
    Reports "row" / "row-done" around each record and "judge" inside, as a dataset run does."""
    n = len(records)
    for i, rec in enumerate(records, 1):
        check(cancel)
        report(progress, "row", i, n, f"row {i}/{n}", row_id=str(rec.get("id", rec.get("key"))))
        row = BenchRow(id=str(rec.get("id", rec.get("key"))), request=rec["request"],
                       response=rec["response"], line=int(rec.get("line", 0)),
                       category=rec.get("category", "") or "",
                       context=rec.get("context") or "", behavior=rec.get("behavior") or "")
        spent: dict[str, float] = {}
        judge_samples(judges, row, rec.get("adversarial_samples") or [], spent, progress,
                      "adversarial")
        judge_samples(judges, row, rec.get("canonical_samples") or [], spent, progress,
                      "canonical")
        rec.setdefault("judge_info", {}).update(judge_records(judges, spent))
        ids = list(rec.get("judges") or [])
        rec["judges"] = ids + [j.id for j in judges if j.id not in ids]
        report(progress, "row-done", i, n, f"row {i}/{n} judged", row_id=row.id)
    return records


@dataclass
class JudgedFile:
    rows: int                       # rows judged and written
    dest: Path
    notes: list[str] = field(default_factory=list)


def rejudge_file(results: Path | str, make_judges: Callable[[], Sequence[Any]],
                 out: Optional[Path | str] = None, *,
                 cancel: Optional[CancelToken] = None,
                 progress: Optional[ProgressFn] = None) -> JudgedFile:
    """Judge every finished row of ``results`` (and its shards) with the judges ``make_judges``
    builds, and write them.

    In place (``out`` None or ``results``): the results locks are taken *before* the judge
    models load and held through read, judging and the atomic rewrite, so a dataset run that is
    still appending makes this fail at once with LockHeld naming its process (nothing read,
    nothing loaded, nothing changed), and a run started meanwhile is refused the same way: no
    row can appear between the read and the rewrite, so none is dropped. Into another file:
    the results are only read (a run may keep appending; its half-written last line is
    skipped) and ``out`` is written atomically under its own lock. A cancel (Cancelled, between
    rows) writes nothing."""
    from engine.advtok.records import fold_records, read_results, results_locked, shard_files
    from engine.atomic import write_text
    from engine.errors import InputError, storage_error
    from engine.locks import FileLock, LockHeld, is_held

    results = Path(results)
    dest = Path(out) if out is not None else results
    in_place = dest.resolve() == results.resolve()

    def judged(files: Optional[list[Path]]) -> tuple[list[dict[str, Any]], list[str]]:
        rr = read_results(results, files=files)
        if not rr.records:
            raise InputError(f"{results}: no finished rows")
        report(progress, "load", 0, None, "judge models")
        judges = make_judges()
        return rejudge(rr.records, judges, cancel=cancel, progress=progress), rr.notes

    if in_place:
        try:
            with results_locked(results) as files:
                recs, notes = judged(files)
                fold_records(results, recs, files)
        except LockHeld as e:
            raise LockHeld(str(e), hint="judge it when that run has finished, or judge what is "
                           "finished so far into another file with --out") from None
        return JudgedFile(len(recs), results, notes)
    recs, notes = judged(None)
    with FileLock(dest, f"output file {dest}"):
        try:
            write_text(dest, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs))
        except OSError as e:
            raise storage_error(e, dest, f"nothing was written; {results} was only read") from None
    if any(is_held(p) for p in [results, *shard_files(results)]):
        notes.append(f"{results} is still being written by a run: rows it finishes from now on "
                     f"are not in {dest}")
    return JudgedFile(len(recs), dest, notes)
