"""docs/hostile-inputs.md maps each hostile case to the test that holds it: every test it names
must exist (a renamed or removed test fails here, not silently in the checklist)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "hostile-inputs.md"


def named_tests() -> list[tuple[str, str]]:
    """(file under tests/, function) for each ``file::name`` in the table rows; a bare
    ``::name`` belongs to the last file named in the same row."""
    out = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        current = None
        for tok in re.findall(r"`([^`]+)`", line):
            m = re.match(r"^([\w/]+\.py)(?:::(\w+))?", tok) or re.match(r"^::(\w+)", tok)
            if m is None:
                continue
            if tok.startswith("::"):
                out.append((current, m.group(1)))
            else:
                current = m.group(1)
                if m.group(2):
                    out.append((current, m.group(2)))
    return out


def test_the_checklist_names_only_tests_that_exist():
    names = named_tests()
    assert len(names) > 60
    missing = []
    for file, func in names:
        path = ROOT / "tests" / file
        if not path.is_file():
            missing.append(f"{file} (no such file)")
            continue
        defined = {n.name for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                   if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        if func not in defined:
            missing.append(f"{file}::{func}")
    assert not missing, "\n".join(missing)
