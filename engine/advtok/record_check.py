"""The types a results row must have before report, replay, judge or a resume read it: a row
written by another tool or edited by hand (``"canonical_samples": "oops"``) is a bad row with
its line and the field named, never a crash deep inside a report. Only the fields those readers
use are checked; a missing optional field is fine (old rows lack newer fields)."""
from __future__ import annotations

import sys
from typing import Any, Optional

SIDES = ("canonical", "adversarial")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    """A number the report can compute with (an integer past a float's range is not)."""
    return (_is_int(v) and abs(v) <= sys.float_info.max) or isinstance(v, float)


def _ids(v: Any) -> bool:
    return isinstance(v, list) and all(_is_int(t) and t >= 0 for t in v)


def _str_or_none(v: Any) -> bool:
    return v is None or isinstance(v, str)


def _num_or_none(v: Any) -> bool:
    return v is None or _is_num(v)


#: field → (check, what it must be)
FIELDS: dict[str, tuple[Any, str]] = {
    "line": (_is_int, "an integer"),
    "category": (_str_or_none, "text or null"),
    "request": (lambda v: isinstance(v, str), "text"),
    "response": (lambda v: isinstance(v, str), "text"),
    "context": (_str_or_none, "text or null"),
    "behavior": (_str_or_none, "text or null"),
    "judges": (lambda v: isinstance(v, list) and all(isinstance(j, str) for j in v),
               "a list of judge names"),
    "improvement": (_num_or_none, "a number or null"),
    "canonical_score": (_num_or_none, "a number or null"),
    "best_score": (_num_or_none, "a number or null"),
    "canonical_ids": (_ids, "a list of token ids"),
    "best_ids": (_ids, "a list of token ids"),
    "prompt_ids": (lambda v: isinstance(v, dict) and all(_ids(x) for x in v.values()),
                   "an object of token-id lists"),
    "model": (lambda v: isinstance(v, dict) and all(_str_or_none(v.get(k))
                                                    for k in ("name", "weights_hash")),
              "an object (name, weights_hash as text)"),
    "tokenizer": (lambda v: isinstance(v, dict) and _str_or_none(v.get("vocab_hash")),
                  "an object (vocab_hash as text)"),
    "config": (lambda v: isinstance(v, dict), "an object"),
    "judge_info": (lambda v: isinstance(v, dict), "an object"),
}


def _sample_problem(s: Any) -> Optional[str]:
    if not isinstance(s, dict):
        return "is not an object"
    if not isinstance(s.get("text", ""), str):
        return "'text' is not text"
    if "token_ids" in s and not _ids(s["token_ids"]):
        return "'token_ids' is not a list of token ids"
    verdicts = s.get("verdicts", {})
    if not isinstance(verdicts, dict):
        return "'verdicts' is not an object"
    for j, v in verdicts.items():
        if not isinstance(v, dict) or not _str_or_none(v.get("label")):
            return f"verdict {j!r} is not an object with a text label"
        detail = v.get("detail")
        if detail is not None and not isinstance(detail, dict):
            return f"verdict {j!r} has a 'detail' that is not an object"
        if detail and "strongreject" in detail and not _is_num(detail["strongreject"]):
            return f"verdict {j!r} has a StrongREJECT score that is not a number"
    return None


def record_problem(rec: dict[str, Any]) -> Optional[str]:
    """Why ``rec`` cannot be read as a results row (None: it can)."""
    rid = rec.get("id", rec.get("key"))
    if not isinstance(rid, str):
        return "no text 'id'"
    for name, (ok, what) in FIELDS.items():
        if name in rec and not ok(rec[name]):
            return f"'{name}' must be {what}"
    for side in SIDES:
        samples = rec.get(f"{side}_samples")
        if samples is None:
            continue
        if not isinstance(samples, list):
            return f"'{side}_samples' must be a list of samples"
        for i, s in enumerate(samples):
            why = _sample_problem(s)
            if why is not None:
                return f"'{side}_samples' item {i} {why}"
    return None
