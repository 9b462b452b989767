"""`--engine-path int8` on the command line: the reduced-precision path is chosen and says it is
inexact on the model line, beside the answer's figures and in the JSON."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # starts real processes (the fast loop skips them)


def _chat(tiny_dir, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "chat", "--model", str(tiny_dir), "--prompt", "Hello there",
         "--temperature", "0", "--max-new-tokens", "6", *extra],
        capture_output=True, text=True, timeout=300)


def test_int8_chat_is_labelled_inexact(tiny_dir):
    p = _chat(tiny_dir, "--engine-path", "int8")
    assert p.returncode == 0, p.stderr
    assert "int8 weight-only decode (INEXACT)" in p.stderr  # the model line
    assert "int8 decode (INEXACT) · " in p.stderr  # beside the figures
    j = _chat(tiny_dir, "--engine-path", "int8", "--json")
    out = json.loads(j.stdout)
    assert out["engine_path"] == "int8" and out["exact"] is False
    ex = json.loads(_chat(tiny_dir, "--json").stdout)
    assert ex["engine_path"] == "fast" and ex["exact"] is True


def test_unknown_engine_path_is_one_usage_error(tiny_dir):
    p = _chat(tiny_dir, "--engine-path", "int3")
    assert p.returncode == 2 and "invalid choice" in p.stderr
