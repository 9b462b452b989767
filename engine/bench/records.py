"""The bench JSONL record: its schema (version, required keys and types), validation and reading.
Free of torch so the report and the TUI can read runs without loading the model stack."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

from engine.errors import InputError

SCHEMA_VERSION = 1

_OPT_NUM = (int, float, type(None))
# key -> allowed types; nested dicts list their own required keys
SCHEMA: dict[str, Any] = {
    "schema": int, "run_id": str, "time": str, "suite": str, "prompt_id": str, "kind": str,
    "repeat": int, "method": str, "label": str, "params": dict, "model_changing": bool,
    "speed_note": str, "max_new_tokens": int, "seed": int,
    "model": {"id": str, "dtype": str},
    "env": {"device": str, "torch": str, "transformers": str, "python": str, "loadavg": list,
            "loadavg_start": list, "cpus": int},
    "cost": dict, "quality": dict, "status": str, "message": str,
}
COST_KEYS: dict[str, tuple] = {
    "prompt_tokens_in": (int, type(None)), "prompt_tokens_effective": (int, type(None)),
    "new_tokens": (int, type(None)), "prefill_s": _OPT_NUM, "decode_tok_s": _OPT_NUM,
    "total_s": _OPT_NUM, "kv_bytes_stored": (int, type(None)), "kv_bytes_peak": (int, type(None)),
    "rss_peak_bytes": (int, type(None)), "aux_s": _OPT_NUM, "prepare_s": _OPT_NUM,
}
# written since memory was measured (older records lack them; checked when present)
OPTIONAL_COST_KEYS: dict[str, tuple] = {
    "kv_bytes_allocated": (int, type(None)), "kv_copy_bytes_per_token": _OPT_NUM,
    "mem_hwm_delta_bytes": (int, type(None)), "answer_tokens": (int, type(None)),
    "fixed_length": (bool, type(None)),
}
QUALITY_KEYS: dict[str, tuple] = {
    "kl_mean": _OPT_NUM, "kl_max": _OPT_NUM, "top1_agree": _OPT_NUM,
    "first_divergence": (int, type(None)), "ref_nll": _OPT_NUM, "contains": (bool, type(None)),
}


def _too_large(v: Any, where: str = "") -> Optional[str]:
    """The first integer the report could not turn into a float (past ~1.8e308), or None."""
    if isinstance(v, int) and not isinstance(v, bool):
        return where or "a value" if abs(v) > sys.float_info.max else None
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    for k, x in items:
        found = _too_large(x, f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


def validate_record(rec: Any) -> list[str]:
    """Problems with a bench record (empty list = valid)."""
    if not isinstance(rec, dict):
        return ["record is not an object"]
    big = _too_large(rec)
    if big:
        return [f"{big} is a number too large to measure with"]
    errs: list[str] = []
    for key, typ in SCHEMA.items():
        if key not in rec:
            errs.append(f"missing {key!r}")
            continue
        val = rec[key]
        if isinstance(typ, dict):
            if not isinstance(val, dict):
                errs.append(f"{key!r} is not an object")
                continue
            for sub, st in typ.items():
                if sub not in val:
                    errs.append(f"missing {key}.{sub}")
                elif not isinstance(val[sub], st) or (st is int and isinstance(val[sub], bool)):
                    errs.append(f"{key}.{sub} has type {type(val[sub]).__name__}")
        elif not isinstance(val, typ) or (typ is int and isinstance(val, bool)):
            errs.append(f"{key!r} has type {type(val).__name__}")
    if errs:
        return errs
    if rec["schema"] != SCHEMA_VERSION:
        errs.append(f"schema version {rec['schema']} (expected {SCHEMA_VERSION})")
    if rec["status"] not in ("ok", "error"):
        errs.append(f"status {rec['status']!r} is not ok|error")
    if rec["repeat"] < 0:
        errs.append("repeat < 0")
    for key in ("loadavg", "loadavg_start"):  # the report reads them as numbers
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in rec["env"][key]):
            errs.append(f"env.{key} is not a list of numbers")
    if rec["status"] == "ok" and rec["kind"] != "prose":
        for k, t in COST_KEYS.items():
            if k not in rec["cost"]:
                errs.append(f"missing cost.{k}")
            elif not isinstance(rec["cost"][k], t):
                errs.append(f"cost.{k} has type {type(rec['cost'][k]).__name__}")
        for k, t in OPTIONAL_COST_KEYS.items():
            if k in rec["cost"] and not isinstance(rec["cost"][k], t):
                errs.append(f"cost.{k} has type {type(rec['cost'][k]).__name__}")
        for k, t in QUALITY_KEYS.items():
            if k not in rec["quality"]:
                errs.append(f"missing quality.{k}")
            elif not isinstance(rec["quality"][k], t):
                errs.append(f"quality.{k} has type {type(rec['quality'][k]).__name__}")
    return errs


def read_records(path: Path | str) -> tuple[list[dict], list[str]]:
    """Records of a bench JSONL and the problems found (line numbers): an interrupted write can
    leave one partial line, which is reported and skipped rather than failing the whole file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such file: {path}")
    recs: list[dict] = []
    problems: list[str] = []
    from engine.bounded_json import iter_jsonl

    for no, rec, err in iter_jsonl(path, "runs file", strict=False):
        if err is not None:
            problems.append(f"line {no}: {err.split(': ', 1)[-1]} (skipped)")
            continue
        errs = validate_record(rec)
        if errs:
            problems.append(f"line {no}: {'; '.join(errs[:3])} (skipped)")
            continue
        recs.append(rec)
    return recs, problems
