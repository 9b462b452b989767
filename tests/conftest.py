"""Shared fixtures: the bundled tokenizer, a tiny random Llama on it (also as a model folder,
``tiny_dir``), and the bundled model.

Tests that use the bundled model (the ``smol_lm`` fixture, even through another fixture) are
marked ``slow`` here; tests that start real processes carry the mark themselves. The fast loop
is ``pytest -m "not slow"``; ``make test`` runs everything."""
from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# hypothesis: no per-example deadline (a loaded shared CPU makes any time limit flaky; the
# suite's rule is that no test depends on machine speed), and the same examples on every run
# (derandomized: CI on a clean clone passes or fails for the code, not the draw). Hunting for
# new failures: `pytest --hypothesis-profile=explore tests/test_hostile_generated.py` (fresh random
# draws each run); add what it finds as a plain test.
try:
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("tokenforge", deadline=None, derandomize=True)
    _hyp_settings.register_profile("explore", deadline=None)
    _hyp_settings.load_profile("tokenforge")
except ImportError:  # pragma: no cover - hypothesis is in the test extras
    pass


def pytest_collection_modifyitems(config, items):
    """Every test that needs the bundled 135M model is ``slow`` (seconds to load, minutes to
    run under load), whichever fixture brought it in."""
    for item in items:
        if "smol_lm" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smol_lm():
    """The bundled SmolLM2-135M-Instruct (converted once into cache/models)."""
    from engine.lm.model import load_model

    return load_model("default")


@pytest.fixture(scope="session")
def tokenizer():
    """The bundled model's tokenizer alone, no weights: from its converted copy in cache/ when
    there (~0.3 s), else read from the GGUF itself (~6 s; a clean checkout's fast loop does not
    pay the ~30 s whole-model conversion). The same tokenizer as ``smol_lm.tokenizer``."""
    from engine.lm.model import load_tokenizer

    return load_tokenizer("default", convert=False)


@pytest.fixture(scope="session")
def tiny_lm(tokenizer):
    from engine.lm.tiny import tiny_llama

    return tiny_llama(tokenizer, seed=0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_lm):
    """``tiny_lm`` saved as a model folder (``--model PATH``), once per session: tests only
    read it."""
    from tinymodel import save_tiny

    return save_tiny(tiny_lm, tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(autouse=True)
def _one_torch_thread(monkeypatch):
    """Tests run torch with one intra-op thread. On the shared 2-core machine under load, two
    threads spin-wait on each other (measured at load 3: a 200-token greedy tiny-model test 26 s
    with 2 threads, 8.5 s with 1; at load 15 a tiny forward ~1 s against ~2 ms; the bundled
    model's 240-token lean-vs-standard test took 253 s at load 4 with two threads). What the tests
    check (token equality, exactness, cancellation) does not depend on the count; a test that
    sets its own count (the split mat-vec test) restores it. Real-process tests start their own
    processes: OMP_NUM_THREADS=1 gives them (and a command run in-process, which sets its
    own count when it loads a model: engine/lm/threads.py) the same one thread."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch = sys.modules.get("torch")  # a TUI-only run never imports torch for this
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _private_user_state(monkeypatch, tmp_path_factory):
    """No test reads the user's real config or writes into their saved sessions."""
    base = tmp_path_factory.mktemp("user")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(base / "config"))
    monkeypatch.delenv("TOKENFORGE_CONFIG", raising=False)
    monkeypatch.setenv("TOKENFORGE_SESSIONS", str(base / "sessions"))


@pytest.fixture(autouse=True)
def _no_user_settings_file(monkeypatch, tmp_path):
    """No test reads or writes the user's saved TUI settings (app/settings_file.py)."""
    monkeypatch.setenv("TOKENFORGE_SETTINGS", str(tmp_path / "settings.json"))
