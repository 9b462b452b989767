"""The strict parser of a query suite JSONL: every malformed line is an InputError naming its line
number, and the queries are built (``suite_files.py`` is the lenient, torch-free read the TUI and
the report use)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from engine.bench.methods.base import QUERY_KINDS, Query
from engine.bench.suite_files import suite_path
from engine.errors import InputError


@dataclass
class Suite:
    name: str
    path: Path
    queries: list[Query]
    prose: Optional[str] = None  # held-out text for NLL / bits per byte
    prose_id: Optional[str] = None
    # held-out examples of the suite's domain (never measured): what phrase merge learns from
    domain: list[Query] = field(default_factory=list)
    domain_sha: str = ""


def load_suite(name: str, *, kinds: Optional[Iterable[str]] = None,
               ids: Optional[Iterable[str]] = None) -> Suite:
    """Parse a suite JSONL; any malformed line raises an InputError naming the line number."""
    path = suite_path(name)
    queries: list[Query] = []
    prose = prose_id = None
    seen: set[str] = set()
    suite_name: Optional[str] = None
    from engine.bounded_json import iter_jsonl

    for no, rec, _ in iter_jsonl(path, "suite"):
        where = f"{path.name} line {no}"
        if not isinstance(rec, dict):
            raise InputError(f"{where}: expected a JSON object")
        for key in ("suite", "id", "kind", "prompt"):
            if not isinstance(rec.get(key), str):
                raise InputError(f"{where}: field {key!r} missing or not a string")
        if suite_name is None:
            suite_name = rec["suite"]
        elif rec["suite"] != suite_name:
            raise InputError(f"{where}: suite {rec['suite']!r} differs from {suite_name!r}")
        if rec["kind"] not in QUERY_KINDS:
            raise InputError(f"{where}: kind {rec['kind']!r} is not one of {', '.join(QUERY_KINDS)}")
        if rec["id"] in seen:
            raise InputError(f"{where}: duplicate id {rec['id']!r}")
        seen.add(rec["id"])
        for key in ("system", "document", "reference"):
            if rec.get(key) is not None and not isinstance(rec[key], str):
                raise InputError(f"{where}: field {key!r} must be a string or null")
        turns = rec.get("turns") or []
        meta = rec.get("meta") or {}
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise InputError(f"{where}: 'turns' must be a list of strings")
        if not isinstance(meta, dict):
            raise InputError(f"{where}: 'meta' must be an object")
        if rec["kind"] == "prose":
            text = rec.get("document")
            if text is None and "file" in meta:
                fp = path.parent / str(meta["file"])
                try:
                    text = fp.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as e:
                    raise InputError(f"{where}: cannot read prose file {fp.name}: {e}") from e
            if not text or not text.strip():
                raise InputError(f"{where}: prose entry has no text")
            prose, prose_id = text, rec["id"]
            continue
        if rec["kind"] in ("qa", "long") and not rec.get("document"):
            raise InputError(f"{where}: a {rec['kind']} query needs a 'document'")
        if not rec["prompt"].strip():
            raise InputError(f"{where}: empty prompt")
        queries.append(Query(id=rec["id"], kind=rec["kind"], prompt=rec["prompt"],
                             system=rec.get("system"), document=rec.get("document"),
                             reference=rec.get("reference"), turns=list(turns), meta=dict(meta)))
    if suite_name is None:
        raise InputError(f"suite {path.name} is empty")
    domain, domain_sha = load_domain(path, queries, prose)
    if kinds is not None:
        kinds = set(kinds)
        bad = kinds - set(QUERY_KINDS)
        if bad:
            raise InputError(f"unknown query kind(s) {', '.join(sorted(bad))}; valid: {', '.join(QUERY_KINDS)}")
        queries = [q for q in queries if q.kind in kinds]
        if "prose" not in kinds:
            prose = prose_id = None
    if ids is not None:
        ids = list(ids)
        missing = [i for i in ids if i not in seen]
        if missing:
            raise InputError(f"unknown query id(s) {', '.join(missing)} in suite {suite_name}")
        queries = [q for q in queries if q.id in ids]
        if prose_id not in ids:
            prose = prose_id = None
    return Suite(name=suite_name, path=path, queries=queries, prose=prose, prose_id=prose_id,
                 domain=domain, domain_sha=domain_sha)


def domain_path(suite_file: Path) -> Path:
    """Where a suite's domain material lives: ``domain/<suite file name>`` beside it."""
    return suite_file.parent / "domain" / suite_file.name


def load_domain(suite_file: Path, queries: list[Query],
                prose: Optional[str]) -> tuple[list[Query], str]:
    """The suite's held-out domain examples (JSONL: ``prompt``, optional ``system``,
    ``document``, ``reply``; a line with ``about`` describes the file) and their hash; none when
    the file does not exist. Train and test stay apart: a measured query's prompt, document or
    reference, or the held-out prose, found verbatim in the material is an InputError."""
    path = domain_path(suite_file)
    if not path.is_file():
        return [], ""
    from engine.bounded_json import iter_jsonl

    out: list[Query] = []
    raw: list[str] = []
    for no, rec, _ in iter_jsonl(path, "domain material"):
        where = f"{path.name} (domain) line {no}"
        if not isinstance(rec, dict):
            raise InputError(f"{where}: expected a JSON object")
        if "about" in rec:
            continue
        if not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
            raise InputError(f"{where}: field 'prompt' missing or empty")
        for key in ("system", "document", "reply"):
            if rec.get(key) is not None and not isinstance(rec[key], str):
                raise InputError(f"{where}: field {key!r} must be a string or null")
        out.append(Query(id=f"domain-{no}", kind="qa" if rec.get("document") else "chat",
                         prompt=rec["prompt"], system=rec.get("system"),
                         document=rec.get("document"), reference=rec.get("reply")))
        raw.extend(rec.get(k) or "" for k in ("prompt", "document", "reply"))
    blob = "\n".join(raw)
    held = [(q.id, t) for q in queries for t in (q.prompt, q.document, q.reference, *q.turns) if t]
    if prose:
        held.append(("prose", prose))
    for qid, t in held:
        if len(t.strip()) >= 12 and t.strip() in blob:
            raise InputError(f"{path.name} (domain): contains text of measured query {qid!r}: "
                             f"{t.strip()[:60]!r}")
    sha = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return out, sha
