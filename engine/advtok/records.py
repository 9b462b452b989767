"""Result records of dataset runs: one JSON line per finished row, replayable (the exact token ids
of both templated prompts, template and model identity with a weights hash, seed, settings, every
sample's ids and text, verdicts). Sharded runs write ``<stem>.shard-<rank>.jsonl`` beside the
results file; readers take the results file and all its shards, so resume and reports see every
finished row whatever the number of processes was."""
from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Optional
from engine.lm.weights_hash import weights_hash  # noqa: F401  (replay and tests import it from here)

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

SCHEMA = "tokenforge.advtok.row/1"


def shard_path(out: Path | str, rank: int, world: int) -> Path:
    """Where rank ``rank`` appends: the results file itself in a one-process run."""
    out = Path(out)
    if world <= 1:
        return out
    return out.with_name(f"{out.stem}.shard-{rank}{out.suffix or '.jsonl'}")


def shard_files(out: Path | str) -> list[Path]:
    """The results file (if present) and every shard of it, in a stable order."""
    out = Path(out)
    found = [out] if out.is_file() else []
    pat = f"{out.stem}.shard-*{out.suffix or '.jsonl'}"
    shards = sorted(out.parent.glob(pat), key=lambda p: (len(p.name), p.name)) if out.parent.is_dir() else []
    return found + [p for p in shards if p.is_file()]


@dataclass
class ReadResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)     # repaired tails, bad lines, duplicates


def _json_obj(raw: bytes) -> Optional[dict[str, Any]]:
    from engine.bounded_json import complete_line  # bounded depth: a hostile line is just bad

    return complete_line(raw)


def read_lines(path: Path, *, repair: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """Complete result lines of one file: a line is complete when it parses (a last line that
    lacks only its newline is kept, and the newline added when ``repair``). An incomplete last
    line is ignored — and cut off atomically when ``repair`` (so its row is redone); other bad
    lines are reported and skipped."""
    from engine.advtok.record_check import record_problem
    from engine.atomic import append_line, write_bytes
    from engine.bounded_json import read_bytes

    notes: list[str] = []
    data = read_bytes(path, "results file")
    lines = data.split(b"\n")
    tail = lines.pop()
    cut = None
    if tail.strip() and _json_obj(tail) is not None:
        lines.append(tail)           # complete: only its final newline is missing
        if repair:
            append_line(path, "")
    elif tail:
        cut = len(data) - len(tail)
    if not tail and lines and lines[-1].strip() and _json_obj(lines[-1]) is None:
        cut = len(data) - len(lines[-1]) - 1
        lines.pop()
    out = []
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        obj = _json_obj(raw)
        why = "not a result line" if obj is None else record_problem(obj)
        if why is not None:  # a wrong type is a bad row here, never a crash in report/replay
            notes.append(f"{path}: line {i}: {why}; ignored" if obj is not None
                         else f"{path}: line {i} is not a result line; ignored")
            continue
        out.append(obj)
    if cut is not None:
        if repair:
            write_bytes(path, data[:cut])
            notes.append(f"{path}: removed a half-written last line ({len(data) - cut} bytes); "
                         "that row will be redone")
        else:
            notes.append(f"{path}: ignored a half-written last line")
    return out, notes


def record_id(rec: dict[str, Any]) -> str:
    return str(rec.get("id", rec.get("key")))


def read_results(out: Path | str, *, repair: bool = False,
                 files: Optional[Iterable[Path]] = None) -> ReadResult:
    """Every finished row in ``out`` and its shards; a row present twice is kept once."""
    rr = ReadResult()
    for p in (list(files) if files is not None else shard_files(out)):
        recs, notes = read_lines(p, repair=repair)
        rr.notes.extend(notes)
        for r in recs:
            rid = record_id(r)
            if rid in rr.ids:
                continue
            rr.ids.add(rid)
            rr.records.append(r)
    rr.records.sort(key=lambda r: (r.get("line", 0), record_id(r)))
    return rr


@contextmanager
def results_locked(out: Path | str) -> Iterator[list[Path]]:
    """Hold the lock (engine.locks) of ``out`` and of every shard of it, the locks a dataset run
    writes under; yields the files present once all are held. Whoever rewrites a results file
    (judge in place, merge) holds them from the read to the atomic write, so no row a run
    appends can be dropped: a run that is writing makes this raise LockHeld naming its process
    at once, and a run started meanwhile is refused the same way."""
    from engine.locks import FileLock

    out = Path(out)
    with ExitStack() as stack:
        held: set[Path] = set()
        while True:  # a shard that appears while locking is locked too
            todo = [p for p in dict.fromkeys([out, *shard_files(out)]) if p not in held]
            if not todo:
                break
            for p in todo:
                stack.enter_context(FileLock(p, f"results file {p}"))
                held.add(p)
        yield shard_files(out)


def fold_records(out: Path, records: list[dict[str, Any]], files: Iterable[Path]) -> None:
    """Write ``records`` as ``out`` in one atomic step, then remove the other ``files`` (its
    shards, whose rows are now in ``out``). Call holding :func:`results_locked`."""
    from engine.atomic import write_text
    from engine.errors import storage_error

    try:  # a full disk: the temporary file goes, the results and shards stay as they were
        write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    except OSError as e:
        raise storage_error(e, out, "the results file and its shards were left as they were") from None
    for p in files:
        if p != out:
            p.unlink()


def merge_results(out: Path | str) -> tuple[int, list[str]]:
    """Fold every shard into ``out`` (one atomic write, rows in file order), then remove the
    shards — holding the results locks, so a run still writing is named instead of losing rows.
    Returns (rows, notes)."""
    out = Path(out)
    with results_locked(out) as files:
        rr = read_results(out, files=files)
        fold_records(out, rr.records, files)
    return len(rr.records), rr.notes


def model_info(lm: LoadedModel) -> dict[str, Any]:
    """The model a row ran on; ``threads``: torch's thread count then (rows are bit-identical
    across runs only at equal counts; not a setting, so not in the fingerprint)."""
    import torch

    return {"name": lm.name, "spec": lm.spec, "source": lm.source, "dtype": lm.dtype,
            "device": lm.device, "engine_path": getattr(lm, "engine_path", None),
            "weights_hash": weights_hash(lm.model), "threads": torch.get_num_threads()}


def template_info(tokenizer: Any, chunks: Any) -> dict[str, Any]:
    tmpl = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(tmpl, dict):
        tmpl = json.dumps(tmpl, sort_keys=True)
    return {"name": f"{getattr(tokenizer, 'name_or_path', '') or 'tokenizer'}"
                    f"#{hashlib.sha256(tmpl.encode()).hexdigest()[:12]}" if tmpl else "plain",
            "has_template": chunks.has_template, "system_used": chunks.system_used,
            "sha256": hashlib.sha256(tmpl.encode()).hexdigest() if tmpl else ""}


def prompt_ids(chunks: Any, cfg: Any, request_ids: list[int]) -> list[int]:
    """The whole templated prompt a tokenization is scored and sampled with."""
    return (list(chunks.prefix_ids) + list(cfg.frozen_prefix_ids) + list(request_ids)
            + list(cfg.frozen_suffix_ids) + list(chunks.tail_ids))
