"""The dashboard form's vocabulary, torch-free: shipped suites and their query kinds, method
names, and the parsers of the combinations and runs-file fields (the engine validates again)."""
from __future__ import annotations

import functools
from pathlib import Path

from engine.bench.report import TABLE_COLUMNS  # noqa: F401  (one column list: CLI, TUI, Markdown)
from engine.paths import expand_user
from engine.errors import InputError

from app.validate import require_text


def parse_combinations(text: str) -> list[str]:
    """'prune-nth+kv-fp8, …' → validated combination names ([] when empty); torch-free."""
    from engine.bench.methods import parse_methods

    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if "+" not in n]
    if bad:
        raise InputError(f"combinations: {', '.join(bad)} is not PROMPT+CACHE (plain methods are ticked above)")
    return parse_methods(",".join(names)) if names else []


WHAT = "Method dashboard — methods × suite grid, aggregate table, terminal plots, PNG/CSV export"
KINDS = ("chat", "qa", "long", "prose")
DEFAULT_METHODS = ("baseline", "kv-fp8")  # a small first grid: the baseline and one method


def suites_available() -> list[str]:
    """Shipped suite names, found without importing the engine's torch parts."""
    from engine.bench.suite_files import shipped_suites

    return shipped_suites()


@functools.lru_cache(maxsize=8)
def suite_counts(name: str) -> dict[str, int]:
    """Entries per query kind of a suite (torch-free; for the grid size and the timeout only:
    the engine parses and validates the suite again). Unreadable lines are skipped."""
    from engine.bench.suite_files import suite_entries

    counts: dict[str, int] = {}
    for rec in suite_entries(name):
        kind = rec.get("kind")
        if isinstance(kind, str):
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def method_choices() -> list[str]:
    from engine.bench.methods import method_names  # torch-free registry

    return method_names()


def parse_runs_path(text: str) -> Path:
    """The runs JSONL path: one line, not a directory, its folder not a file."""
    t = require_text(text, "runs file", 4096).strip()
    if "\n" in t or "\x00" in t:
        raise InputError("runs file: one line, a path to a .jsonl file")
    p = expand_user(t, "runs file")
    if p.is_dir():
        raise InputError(f"runs file: {p} is a directory")
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"runs file: {parent} is a file, not a folder")
    return p


# ---- a compression sweep from the form (the command line's --sweep) ---------------------------
def sweep_choices() -> list[tuple[str, str]]:
    """(label, "METHOD.KEY") for every method with a declared ratio parameter (torch-free)."""
    from engine.bench.methods.params import RATIO_PARAMS

    return [(f"{m}.{rp.key}", f"{m}.{rp.key}") for m, rp in RATIO_PARAMS.items()]


def sweep_help(choice: str) -> str:
    """What the chosen parameter means and the values it takes (its declared bound)."""
    from engine.bench.methods.params import RATIO_PARAMS

    method, _, key = choice.partition(".")
    rp = RATIO_PARAMS.get(method)
    if rp is None or rp.key != key:
        return ""
    kind = "whole numbers" if rp.bound.kind == "int" else "numbers"
    return f"{key}: {rp.meaning} · {kind} in {rp.bound.describe()}, comma-separated"


def parse_sweep_fields(choice: str, values: str, methods: list[str]):
    """The sweep fields → a checked ``engine.bench.sweep.Sweep`` (None: no sweep chosen). The
    values go through the parser ``bench --sweep`` uses; the swept method may not also be
    ticked among the methods (the sweep already runs it at each value)."""
    from engine.bench.sweep import sweep_of

    if not choice:
        if values.strip():
            raise InputError("sweep: choose the method and parameter these values are for")
        return None
    method, _, key = choice.partition(".")
    sw = sweep_of(method, key, values, flag="sweep")
    if method in methods:
        raise InputError(f"sweep: {method} is also ticked among the methods; the sweep already "
                         "runs it at each value (untick it, or add its default to the values)")
    return sw
