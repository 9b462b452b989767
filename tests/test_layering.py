"""Import direction, checked statically over every module's AST (also imports inside functions):
the engine imports nothing from the app or the UI libraries, and each engine package imports only
what its ``__init__`` docstring allows. Also: comments and docstrings cite only documents that are
in the repository (docs/), never background notes kept elsewhere."""
from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "engine"

# package -> engine packages it must never import
FORBIDDEN = {
    "engine": ("app", "textual", "rich"),
    "engine.lm": ("engine.advtok", "engine.treesearch", "engine.bench"),
    "engine.treesearch": ("engine.advtok", "engine.bench"),
    "engine.advtok": ("engine.treesearch", "engine.bench"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, relative imports resolved against its package."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def engine_files() -> list[Path]:
    return sorted(ENGINE.rglob("*.py"))


def test_imports_are_resolved():
    """The checker itself sees the imports it should (so the rules below can fail)."""
    found = imports_of(ENGINE / "lm" / "chat.py")
    assert "engine.lm.forward" in found and "engine.errors" in found
    methods = imports_of(ENGINE / "bench" / "methods" / "combined.py")
    assert "engine.bench.methods.combos" in methods  # a relative import, resolved


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_direction(package):
    folder = ROOT.joinpath(*package.split("."))
    bad = []
    for path in sorted(folder.rglob("*.py")):
        for target in imports_of(path):
            if any(target == f or target.startswith(f + ".") for f in FORBIDDEN[package]):
                bad.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not bad, "\n".join(bad)


def test_every_engine_package_says_what_it_may_import():
    for init in ENGINE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and "import" in doc, f"{init.relative_to(ROOT)} has no import rule in its docstring"


def _module_file(dotted: str) -> Path | None:
    base = ROOT.joinpath(*dotted.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _defined_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def test_every_project_import_resolves():
    """Every ``from engine…/app… import name`` names a real module or a name defined there, so a
    guarded import (``try: … except ImportError``) can never hide a stale path after a move."""
    bad = []
    for folder in ("engine", "app", "bench", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = module_name(path)
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom):
                    if node.level:
                        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                        target = ".".join(parts + ([node.module] if node.module else []))
                    else:
                        target = node.module or ""
                    if target.split(".")[0] not in ("engine", "app"):
                        continue
                    src = _module_file(target)
                    if src is None:
                        bad.append(f"{path.relative_to(ROOT)}: no module {target}")
                        continue
                    defined = _defined_names(src)
                    for alias in node.names:
                        if alias.name != "*" and alias.name not in defined \
                                and _module_file(f"{target}.{alias.name}") is None:
                            bad.append(f"{path.relative_to(ROOT)}: {target} has no {alias.name}")
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.name.split(".")[0] in ("engine", "app") and _module_file(alias.name) is None:
                            bad.append(f"{path.relative_to(ROOT)}: no module {alias.name}")
    assert not bad, "\n".join(bad)


# ---- module size -------------------------------------------------------------------------------
ENGINE_MAX_LINES = 450  # the goal is ~400; over this a module has grown a second job: split it


def long_modules(folder: Path, limit: int) -> list[str]:
    out = []
    for p in sorted(folder.rglob("*.py")):
        n = len(p.read_text(encoding="utf-8").splitlines())
        if n > limit:
            out.append(f"{p.relative_to(ROOT)}: {n} lines (limit {limit})")
    return out


def test_size_check_sees_long_files():
    """The check counts real lines: a limit below the largest engine module reports it."""
    largest = max(len(p.read_text(encoding="utf-8").splitlines()) for p in engine_files())
    assert long_modules(ENGINE, largest - 1)
    assert not long_modules(ENGINE, largest)


def test_no_engine_module_over_the_size_limit():
    bad = long_modules(ENGINE, ENGINE_MAX_LINES)
    assert not bad, "split along a real seam:\n" + "\n".join(bad)


APP = ROOT / "app"
APP_MAX_LINES = 450  # the same rule for the Textual app: screens split into form, view, sync parts


def test_no_app_module_over_the_size_limit():
    bad = long_modules(APP, APP_MAX_LINES)
    assert not bad, "split along a real seam:\n" + "\n".join(bad)


# ---- import cycles -----------------------------------------------------------------------------
def project_modules() -> dict[str, Path]:
    return {module_name(p): p for folder in (ENGINE, APP) for p in sorted(folder.rglob("*.py"))}


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module → the project modules it imports. ``from pkg import name`` points at ``pkg.name``
    when that is a module, else at ``pkg``; every import counts wherever it stands (module level,
    inside a function, under ``if TYPE_CHECKING``): each one is a dependency between the two."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = {t for t in imports_of(path) if t in modules}
        # ``from pkg import mod``: drop the bare ``pkg`` when only its submodules were named
        for dep in list(deps):
            named = [d for d in deps if d.startswith(dep + ".")]
            if named and not _names_from_package(path, dep, modules):
                deps.discard(dep)
        deps.discard(name)
        graph[name] = deps
    return graph


def _names_from_package(path: Path, pkg: str, modules: dict[str, Path]) -> bool:
    """True when ``path`` takes from package ``pkg`` some name that is not a submodule (or
    imports ``pkg`` itself): then the package's ``__init__`` is a real dependency."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import) and any(a.name == pkg for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == pkg and any(f"{pkg}.{a.name}" not in modules for a in node.names):
                return True
    return False


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_cycle_finder_sees_a_cycle():
    """The finder reports a planted cycle (and a chain is not one), so the rule below can fail."""
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    graph = import_graph(project_modules())
    assert "engine.treesearch.node" in graph["engine.treesearch.tree"]
    assert "app.settings_file" in graph["app.settings"]


def test_no_import_cycle_in_app_or_engine():
    """Imports go one way: no two project modules import each other, directly or through others
    (function-level and TYPE_CHECKING imports count: each is a dependency all the same). Shared
    pieces live below their users: configs in leaf modules, the command modules' helpers in
    app/commands/common.py and app/interrupt.py."""
    cycles = strongly_connected(import_graph(project_modules()))
    assert not cycles, "import cycles:\n" + "\n".join(" ↔ ".join(c) for c in cycles)


# ---- comments cite documents that are in the repository ----------------------------------------
CODE_DIRS = ("app", "engine", "bench", "tests")
NOTE_NAMES = r"(ALGORITHMS|DESIGN|METHODS|TUI)"
# a background note by name (with or without .md, before a section sign) that is not a docs/ path
OUTSIDE_NOTE = re.compile(rf"(?<![\w/]){NOTE_NAMES}(\.md\b|\s*§)")
SECTION = re.compile(r"§")
DOC_PATH = re.compile(r"\bdocs/[\w./-]+\.md\b")


def comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and every module/class/function docstring in a file."""
    src = path.read_text(encoding="utf-8")
    out = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(src).readline)
           if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                first = node.body[0].lineno
                out += [(first + i, line) for i, line in enumerate(doc.splitlines())]
    return out


def note_citations(files: list[Path]) -> list[str]:
    """Comments/docstrings that cite a design note outside the repository: the note by name, or a
    section sign whose sentence names no docs/ file."""
    bad = []
    for p in files:
        lines = comments_and_docstrings(p)
        for k, (n, text) in enumerate(lines):
            near = " ".join(t for _, t in lines[max(0, k - 2):k + 1])  # a citation may wrap
            if OUTSIDE_NOTE.search(text) or (SECTION.search(text) and not DOC_PATH.search(near)):
                bad.append(f"{p.relative_to(ROOT)}:{n}: {text.strip()}")
    return bad


def code_files() -> list[Path]:
    return sorted(p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py"))


def test_note_citation_check_sees_one(tmp_path):
    """The check flags a note cited by name or by a bare section, and passes a docs/ citation."""
    f = tmp_path / "m.py"
    sign = "\u00a7"
    f.write_text(f'"""Module.\n\nSee ALGORITHMS {sign}2.1."""\n# METHODS.md says so\n'
                 f'# as the design notes say ({sign}3)\n'
                 f'X = 1  # docs/algorithms.md {sign}2.1 and {sign}2.3\n', encoding="utf-8")
    global ROOT
    root, ROOT = ROOT, tmp_path
    try:
        assert sorted(b.split(":")[1] for b in note_citations([f])) == ["3", "4", "5"]
    finally:
        ROOT = root


def test_comments_cite_only_documents_in_the_repo():
    bad = note_citations(code_files())
    assert not bad, ("write the fact into docs/ (or make the comment self-contained) and cite "
                     "the docs/ file:\n" + "\n".join(bad))


def test_cited_docs_exist():
    missing = sorted({f"{p.relative_to(ROOT)}: {m}" for p in code_files()
                      for _, text in comments_and_docstrings(p)
                      for m in DOC_PATH.findall(text) if not (ROOT / m).exists()})
    assert not missing, "\n".join(missing)
