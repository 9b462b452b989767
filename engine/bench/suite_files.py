"""Where the shipped query suites live and a lenient, torch-free read of their entries.

``engine.bench.suite.load_suite`` is the strict parser (every malformed line is an error, queries are
built); the TUI's grid sizing and the report's depth lookup only need the raw entries and must not
import torch, so they read through :func:`suite_entries`.
"""
from __future__ import annotations

from pathlib import Path

from engine.errors import InputError

SUITES_DIR = Path(__file__).resolve().parent / "suites"


def shipped_suites() -> list[str]:
    """Names of the suites shipped in engine/bench/suites."""
    return sorted(p.stem for p in SUITES_DIR.glob("*.jsonl"))


def suite_path(name: str) -> Path:
    """A suite name ('core-v1') → its shipped file; an existing path is used as is."""
    p = Path(name)
    if p.suffix == ".jsonl" and p.exists():
        return p
    cand = SUITES_DIR / f"{name}.jsonl"
    if cand.exists():
        return cand
    known = shipped_suites()
    raise InputError(f"unknown suite {name!r}; shipped suites: {', '.join(known) or 'none'}")


def suite_entries(name: str) -> list[dict]:
    """The suite's JSON objects, one per readable line; [] when the suite cannot be found or read
    (callers use this for sizing and labels, never to validate)."""
    from engine.bounded_json import iter_jsonl

    try:
        return [rec for _, rec, _ in iter_jsonl(suite_path(name), "suite", strict=False)
                if isinstance(rec, dict)]
    except InputError:
        return []
