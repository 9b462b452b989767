"""No new markup strings built from data in the app: every f-string whose text holds a markup tag
(``[b]``, ``[/]``, ``[$accent]``…) may interpolate only values that went through the output
layer (``esc``/``tesc``/``styled``/``text``/``plain``/``printable``), carry a format spec
(``{x:.1f}``), or are listed below as the program's own values (counts, states, fragments it
built with the layer). A new interpolation fails here: wrap the value, or — when it cannot come
from a file, a session, a model or argv — add it to ``OWN_VALUES`` for that module."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app"

#: a tag as Rich or Textual markup reads it
TAG = re.compile(r"\[[a-zA-Z#/@$]")
#: the output layer and number/duration formatters (their results hold no data text)
LAYER = {"esc", "tesc", "plain", "printable", "text", "styled", "len", "fmt_seconds",
         "fmt_duration", "fmt_value", "fmt_reward", "score_text", "fmt", "_pct", "fmt_size"}

#: per module: interpolations that are the program's own values (never data)
OWN_VALUES: dict[str, set[str]] = {
    "app/commands/attack.py": {'p.message'},
    "app/commands/attack_eval.py": {'par.rank', 'par.world'},
    "app/commands/chat.py": {'HELP'},
    "app/screens/attack.py": {"'green' if imp > 0 else 'dim'", 'delta', 'how', 'r.edge_distance',
        'r.iterations', 'r.levenshtein'},
    "app/screens/chat.py": {'m.reason'},
    "app/screens/dashboard.py": {'g.max_new_tokens', 'how', 'keep', 's.errors', 's.skipped',
        's.written', 'self._estimate_text()', 'self._timeout_text()', 'what', 'why'},
    "app/screens/dashboard_report.py": {'extra'},
    "app/screens/job_screen.py": {'self.status_detail()', 'self.timeout_text()'},
    "app/screens/leave_settings.py": {'self.n_edits'},
    "app/screens/search.py": {"c.get('batch', '?')", "c.get('lam', '?')", "c.get('seed')",
        "c.get('temperature', '?')", "c.get('top_p', '?')", "c.get('widening', '?')", 'extra',
        'r.generated_tokens', 'r.max_depth', 'r.nodes', 'r.rollouts_done', 'r.rollouts_total'},
    "app/screens/search_form.py": {"m.get('depth', '–')",
        "m.get('nodes', m.get('tree_size', '–'))", 'step', "total or '?'"},
    "app/screens/settings.py": {'n', 'note', 'why'},
    "app/widgets/lattice_view.py": {'lat.ids[self.cursor]', 'self.cursor', 'what'},
    "app/widgets/phase_progress.py": {'HINT', 'phase', 'self.kind', 'self.state', 'style'},
    "app/widgets/token_explorer.py": {"'on' if self.colour else 'off'", "'s' * (n_total != 1)",
        'body', 'css', 'fig', 'i', 'info.id', 'n_total', 'nav', 's.id', 'self._where(b)',
        'self.sel', 'text', 'what'},
    "app/widgets/tree_nav.py": {'flags', 'i.draws', 'i.visits', 'src', 'where'},
}


def _is_layer_call(v: ast.AST) -> bool:
    if isinstance(v, ast.Constant):
        return True
    if isinstance(v, ast.Call):
        f = v.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
        return name in LAYER
    return False


def markup_interpolations(path: Path) -> list[tuple[int, str]]:
    """(line, expression) of each interpolation in a markup f-string that is not through the
    layer and has no format spec."""
    out = []
    for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(n, ast.JoinedStr):
            continue
        lit = "".join(v.value for v in n.values if isinstance(v, ast.Constant))
        if not TAG.search(lit):
            continue
        for v in n.values:
            if isinstance(v, ast.FormattedValue) and v.format_spec is None and not _is_layer_call(v.value):
                out.append((n.lineno, ast.unparse(v.value)))
    return out


def test_the_check_sees_data_in_markup(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('x.print(f"[red]{e}[/] {tesc(n)} {k:,}")\nx.print(f"no tag {e}")\n')
    assert markup_interpolations(bad) == [(1, "e")]


def test_no_markup_built_from_data():
    bad = []
    for path in sorted(APP.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel == "app/inert.py":
            continue
        own = OWN_VALUES.get(rel, set())
        bad += [f"{rel}:{line}: {expr}" for line, expr in markup_interpolations(path)
                if expr not in own]
    assert not bad, ("markup f-string with an interpolated value not through app/inert.py "
                     "(esc/tesc/styled/text):\n" + "\n".join(bad))


def test_own_values_are_still_there():
    """The list does not outlive the code: each entry is still interpolated somewhere."""
    stale = []
    for rel, exprs in OWN_VALUES.items():
        found = {e for _, e in markup_interpolations(ROOT / rel)}
        stale += [f"{rel}: {e}" for e in sorted(exprs - found)]
    assert not stale, "\n".join(stale)
