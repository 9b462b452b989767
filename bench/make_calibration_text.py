"""Assemble the activation-sparsity calibration text from Python's own documentation.

The shipped file (engine/bench/suites/calibration-docs-v1.txt) was made by this script with
CPython 3.11.7: prose paragraphs of the language reference topics that ship with Python
(``pydoc_data.topics``) and of the docstrings of pure-Python standard-library modules, both under
the PSF License Agreement (engine/bench/suites/README-calibration.md). Paragraphs that look like
code, grammar or tables are dropped; duplicates are dropped; order is fixed (sorted), so the
output only depends on the Python version. It is re-run only to make a new version of the file.

    .venv/bin/python bench/make_calibration_text.py [--chars 130000] [--out PATH]
"""
from __future__ import annotations

import argparse
import ast
import re
import sysconfig
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "engine" / "bench" / "suites" / "calibration-docs-v1.txt"
# modules whose docstrings are mostly prose (no tests, no generated tables)
MODULES = ["argparse", "asyncio/events.py", "asyncio/futures.py", "asyncio/locks.py",
           "asyncio/queues.py", "asyncio/streams.py", "asyncio/tasks.py", "bisect", "calendar",
           "codecs", "collections/__init__.py", "concurrent/futures/_base.py", "configparser",
           "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "enum",
           "fractions", "functools", "gettext", "glob", "gzip", "heapq", "hmac", "imaplib",
           "inspect", "ipaddress", "json/__init__.py", "json/decoder.py", "json/encoder.py",
           "locale", "logging/__init__.py", "logging/handlers.py", "mailbox", "operator",
           "optparse", "os", "pathlib", "pickle", "pprint", "queue", "random", "sched", "secrets",
           "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "statistics", "string",
           "subprocess", "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize",
           "traceback", "typing", "unittest/case.py", "unittest/mock.py", "urllib/parse.py",
           "urllib/request.py", "uuid", "warnings", "weakref", "zipfile"]
CODE_CHARS = set("{}[]=*_`<>|\\#$@~^")


def prose(block: str) -> str | None:
    """One paragraph as a line of prose, or None when it looks like code, a table or a list."""
    lines = block.split("\n")
    if any(re.match(r"^\s{3,}\S", ln) for ln in lines[1:]) and \
            any(re.match(r"^\s{8,}\S", ln) for ln in lines):
        return None
    s = " ".join(ln.strip() for ln in lines).strip()
    s = re.sub(r"\s+", " ", s)
    if len(s) < 160 or not s.endswith(".") or ">>>" in s or "::" in s or "..." in s[:-3]:
        return None
    if sum(c in CODE_CHARS for c in s) > 0.004 * len(s):
        return None
    if sum(c in "()" for c in s) > 0.015 * len(s) or sum(c.isdigit() for c in s) > 0.03 * len(s):
        return None
    if not s[0].isupper():
        return None
    return s


def paragraphs(text: str) -> list[str]:
    return [p for p in (prose(b) for b in re.split(r"\n\s*\n", text)) if p]


def docstrings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            d = ast.get_docstring(node, clean=True)
            if d:
                out.extend(paragraphs(d))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chars", type=int, default=130_000)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    import pydoc_data.topics as topics

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chunks: list[str] = []
    for key in sorted(topics.topics):
        chunks.extend(paragraphs(topics.topics[key]))
    for m in MODULES:
        p = stdlib / (m if m.endswith(".py") else f"{m}.py")
        chunks.extend(docstrings(p))
    seen: set[str] = set()
    kept: list[str] = []
    total = 0
    for c in chunks:
        if c in seen:
            continue
        seen.add(c)
        kept.append(c)
        total += len(c) + 2
        if total >= a.chars:
            break
    a.out.write_text("\n\n".join(kept) + "\n", encoding="utf-8")
    print(f"{a.out}: {len(kept)} paragraphs, {total:,} characters")


if __name__ == "__main__":
    main()
