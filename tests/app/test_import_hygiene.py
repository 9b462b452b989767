"""Layering: the engine never imports textual or rich; starting the TUI does not import torch."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # starts real processes (the fast loop skips them)

ROOT = Path(__file__).resolve().parents[2]


def run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_engine_never_imports_ui_libraries():
    import engine

    names = sorted(m.name for m in pkgutil.walk_packages(engine.__path__, "engine."))
    code = ("import importlib, sys\n"
            f"for n in {names!r}:\n"
            "    importlib.import_module(n)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'rich'))\n"
            "print(','.join(bad))")
    assert run(code) == ""


def test_tui_import_does_not_import_torch():
    code = ("import sys\n"
            "import app.tui, app.app, app.runner, app.screens.chat, app.screens.settings, "
            "app.screens.attack, app.screens.search, app.screens.dashboard\n"
            "print(','.join(sorted(m for m in ('torch', 'transformers') if m in sys.modules)))")
    assert run(code) == ""
