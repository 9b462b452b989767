"""Benchmark files for dataset runs: JSONL, or the CSV layouts of AdvBench (``goal,target``),
HarmBench (``Behavior,FunctionalCategory,SemanticCategory,ContextString,BehaviorID``) and
JailbreakBench (``Goal,Target,Behavior,Category``), recognised from the header. The user brings
the file; nothing is downloaded. Bad rows get one message each (with the line number) and the
rest of the file still runs."""
from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from engine.advtok.judges.prompts import HARMBENCH_CONTEXT_JOIN
from engine.errors import InputError

FIELDS = ("request", "response", "category", "id", "system", "context")

# layout name -> (lower-cased header it is recognised by, field -> column)
LAYOUTS: dict[str, tuple[frozenset[str], dict[str, str]]] = {
    "harmbench": (frozenset({"behavior", "functionalcategory", "semanticcategory", "behaviorid"}),
                  {"request": "behavior", "category": "semanticcategory", "id": "behaviorid",
                   "context": "contextstring"}),
    "jailbreakbench": (frozenset({"goal", "target", "behavior", "category"}),
                       {"request": "goal", "response": "target", "category": "category",
                        "id": "behavior"}),
    "advbench": (frozenset({"goal", "target"}), {"request": "goal", "response": "target"}),
}
# extra columns a layout may carry without a message (JailbreakBench ships an index and a source)
KNOWN_EXTRA = {"harmbench": {"tags", "functionalcategory"}, "jailbreakbench": {"", "index", "source"}, "advbench": set()}
JSONL_KEYS = {"request", "response", "category", "id", "system", "context", "goal", "target",
              "behavior", "behaviorid"}
DEFAULT_RESPONSE = "Sure, here is"


@dataclass
class BenchRow:
    """One benchmark row. ``id`` is the file's id when it has one, else a content hash, so a
    resumed run recognises its finished rows even after the file was reordered."""

    id: str
    request: str
    response: str
    line: int
    category: str = ""
    system: Any = None            # None = not given (the run's --system applies)
    # a behaviour's context (HarmBench's ContextString), kept apart: ``request`` is what the
    # model is asked (context, a rule, the behaviour: HarmBench's layout), ``behavior`` the
    # request alone, so a judge with a contextual prompt gets both as its authors specify
    context: str = ""
    behavior: str = ""


@dataclass
class BenchmarkFile:
    path: str
    layout: str                   # "jsonl", "advbench", "harmbench", "jailbreakbench", "custom"
    rows: list[BenchRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)     # "line N: message"
    columns: dict[str, str] = field(default_factory=dict)  # field -> column used
    sha256: str = ""


def parse_columns(spec: Optional[str]) -> dict[str, str]:
    """``request=goal,response=target,category=cat,id=BehaviorID`` -> field -> column."""
    out: dict[str, str] = {}
    if not spec:
        return out
    for part in spec.split(","):
        if "=" not in part:
            raise InputError(f"--columns entry {part!r} is not FIELD=COLUMN",
                             hint=f"fields: {', '.join(FIELDS)}")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in FIELDS:
            raise InputError(f"--columns: unknown field {k!r}", hint=f"fields: {', '.join(FIELDS)}")
        if not v:
            raise InputError(f"--columns: field {k!r} names no column")
        out[k] = v
    return out


def content_id(request: str, response: str, context: str = "") -> str:
    blob = json.dumps([request, response, context], ensure_ascii=False)
    return "h" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:15]


def read_benchmark(path: Path | str, columns: Optional[dict[str, str]] = None,
                   default_response: str = DEFAULT_RESPONSE) -> BenchmarkFile:
    """Read and check a benchmark file. Raises InputError only when nothing can be read (missing
    file, not UTF-8, unknown CSV header); per-row problems are collected in ``problems``.
    HarmBench has no target column: its rows get ``default_response``."""
    p = Path(path)
    if not p.exists():  # a FIFO or a device is named as such by read_bytes
        raise InputError(f"dataset file not found: {p}")
    from engine.bounded_json import read_bytes

    data = read_bytes(p, "dataset file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{p} is not UTF-8 text (byte {e.start})") from None
    cols = dict(columns or {})
    first = next((s for s in text.split("\n") if s.strip()), "")
    if p.suffix.lower() in (".jsonl", ".json", ".ndjson") or first.lstrip().startswith("{"):
        bf = _read_jsonl(p, text, cols, default_response)
    else:
        bf = _read_csv(p, text, cols, default_response)
    bf.sha256 = hashlib.sha256(data).hexdigest()
    _dedupe(bf)
    return bf


def _read_jsonl(p: Path, text: str, cols: dict[str, str], default_response: str) -> BenchmarkFile:
    bf = BenchmarkFile(path=str(p), layout="jsonl", columns=cols)
    unknown_seen: set[str] = set()
    # "\n" only: str.splitlines also breaks inside JSON strings at U+2028, U+2029 and NEL
    for line_no, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        from engine.bounded_json import BadJSON, loads

        try:
            obj = loads(raw, f"line {line_no}")   # bounded depth: never a RecursionError
        except BadJSON as e:
            bf.problems.append(str(e))
            continue
        if not isinstance(obj, dict):
            bf.problems.append(f"line {line_no}: expected a JSON object")
            continue
        low = {str(k).lower(): v for k, v in obj.items()}
        named = {k: v.lower() for k, v in cols.items()}
        extra = set(low) - JSONL_KEYS - set(named.values())
        if extra - unknown_seen:
            bf.problems.append(f"line {line_no}: unknown field(s) {', '.join(sorted(extra - unknown_seen))} "
                               "ignored (map them with --columns)")
            unknown_seen |= extra

        def get(f: str, *alts: str) -> Any:
            for k in ((named[f],) if f in named else ()) + (f,) + alts:
                if k in low:
                    return low[k]
            return None

        row = _make_row(bf, line_no, get("request", "goal", "behavior"),
                        get("response", "target"), get("category"), get("id", "behaviorid"),
                        get("context"), default_response)
        if row is not None:
            if "system" in low or "system" in named:
                s = get("system")
                if s is not None and (not isinstance(s, str) or _text_problem("system", s)):
                    bf.problems.append(f"line {line_no}: " + (_text_problem("system", s) or
                                                              "'system' must be a string or null"))
                    continue
                row.system = _NULL_SYSTEM if s is None else s
            bf.rows.append(row)
    return bf


_NULL_SYSTEM = "\x00template-default"   # a JSON null system: the template's own default


def _read_csv(p: Path, text: str, cols: dict[str, str], default_response: str) -> BenchmarkFile:
    # the csv module stops at a cell over its field limit (131,072 by default) and every later
    # row is lost: let it read any cell a line may hold, then refuse long cells row by row
    from engine.bounded_json import MAX_LINE_BYTES

    csv.field_size_limit(max(csv.field_size_limit(), MAX_LINE_BYTES))
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{p} is empty") from None
    except csv.Error as e:
        raise InputError(f"{p}: line 1 is not CSV ({e})") from None
    low = [h.strip().lower() for h in header]
    hset = set(low)
    layout, mapping = "custom", {}
    for name, (needs, m) in LAYOUTS.items():
        if needs <= hset:
            layout, mapping = name, dict(m)
            break
    for f, c in cols.items():
        if c.lower() not in hset:
            raise InputError(f"--columns: {p} has no column {c!r}",
                             hint=f"its header: {', '.join(header)}")
        mapping[f] = c.lower()
    if "request" not in mapping:
        raise InputError(f"{p}: unrecognised CSV header ({', '.join(header)})",
                         hint="expected AdvBench goal,target / HarmBench Behavior,… / "
                              "JailbreakBench Goal,Target,Behavior,Category, or map with "
                              "--columns request=COL,response=COL")
    if "response" not in mapping and layout == "jailbreakbench":
        mapping["response"] = "target"
    bf = BenchmarkFile(path=str(p), layout=layout if not cols else f"{layout}+columns",
                       columns={f: header[low.index(c)] for f, c in mapping.items()})
    used = set(mapping.values()) | KNOWN_EXTRA.get(layout, set())
    extra = [header[i] for i, h in enumerate(low) if h not in used]
    if extra:
        bf.problems.append(f"line 1: unknown column(s) {', '.join(extra)} ignored "
                           "(map them with --columns)")
    idx = {f: low.index(c) for f, c in mapping.items()}
    line_no = 1
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            bf.problems.append(f"line {reader.line_num}: not CSV ({e})")
            break
        line_no = reader.line_num
        if not any(s.strip() for s in rec):
            continue
        if len(rec) != len(header):
            bf.problems.append(f"line {line_no}: {len(rec)} fields, the header has {len(header)}")
            continue

        def get(f: str) -> Optional[str]:
            return rec[idx[f]] if f in idx else None

        row = _make_row(bf, line_no, get("request"), get("response"), get("category"),
                        get("id"), get("context"), default_response)
        if row is not None:
            if "system" in idx:
                row.system = get("system")
                why = _text_problem("system", row.system)
                if why is not None:
                    bf.problems.append(f"line {line_no}: {why}")
                    continue
            bf.rows.append(row)
    return bf


def _text_problem(name: str, v: Any) -> Optional[str]:
    """Why a row's field cannot be used as text: a wrong type, a lone surrogate (JSON's
    ``\\ud800`` escapes decode to one; no tokenizer can encode it), or over the text limit."""
    from engine.bounds import MAX_TEXT_CHARS

    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        return f"'{name}' must be text, not {type(v).__name__}"
    if isinstance(v, str):
        if len(v) > MAX_TEXT_CHARS:
            return f"'{name}' is {len(v):,} characters; the limit is {MAX_TEXT_CHARS:,}"
        try:
            v.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"'{name}' holds a lone surrogate (U+{ord(v[e.start]):04X}): not valid text"
    return None


def _make_row(bf: BenchmarkFile, line_no: int, request: Any, response: Any, category: Any,
              rid: Any, context: Any, default_response: str) -> Optional[BenchRow]:
    for name, v in (("request", request), ("response", response), ("category", category),
                    ("id", rid), ("context", context)):
        why = _text_problem(name, v)
        if why is not None:
            bf.problems.append(f"line {line_no}: {why}")
            return None
    if not isinstance(request, str) or not request.strip():
        bf.problems.append(f"line {line_no}: empty or missing request")
        return None
    if response is None or (isinstance(response, str) and not response.strip()):
        response = default_response
    if not isinstance(response, str):
        bf.problems.append(f"line {line_no}: the response must be text")
        return None
    context = context.strip() if isinstance(context, str) else ""
    behavior = request.strip()
    if context:
        request_text = HARMBENCH_CONTEXT_JOIN.format(context=context, behavior=behavior)
    else:
        request_text = behavior
    rid = str(rid).strip() if rid not in (None, "") else content_id(request_text, response)
    return BenchRow(id=rid, request=request_text, response=response.strip(), line=line_no,
                    category=str(category).strip() if category not in (None, "") else "",
                    context=context, behavior=behavior)


def _dedupe(bf: BenchmarkFile) -> None:
    """Drop rows that repeat an earlier id or an earlier (request, response) pair."""
    ids: dict[str, int] = {}
    pairs: dict[tuple[str, str], int] = {}
    keep = []
    for r in bf.rows:
        key = (r.request, r.response)
        if key in pairs:
            bf.problems.append(f"line {r.line}: duplicate of line {pairs[key]}; skipped")
            continue
        if r.id in ids:
            bf.problems.append(f"line {r.line}: duplicate id {r.id!r} (first on line {ids[r.id]}); skipped")
            continue
        ids[r.id] = r.line
        pairs[key] = r.line
        keep.append(r)
    bf.rows = keep
    bf.problems.sort(key=lambda m: int(m.split(":")[0].split()[1]) if m.startswith("line ") else 0)


def system_for(row: BenchRow, default: Optional[str]) -> Optional[str]:
    """The system prompt a row runs with: its own, the template default (JSON null) or the run's."""
    if row.system is None:
        return default
    if row.system == _NULL_SYSTEM:
        return None
    return row.system
