"""README's table of environment variables agrees with the code: every variable the code reads
is in the table, every row is in the code, and each one really moves what its row says."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _documented() -> set[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `(TOKENFORGE_\w+)` \|", text, re.M))


def _read_by_code() -> set[str]:
    names: set[str] = set()
    for pkg in ("app", "engine"):
        for f in (ROOT / pkg).rglob("*.py"):
            names.update(re.findall(r"[\"'](TOKENFORGE_[A-Z_]+)[\"']", f.read_text(encoding="utf-8")))
    return names


def test_the_table_lists_exactly_what_the_code_reads():
    assert _documented() == _read_by_code()


def _cache(tmp: Path) -> None:
    from engine.paths import cache_dir

    assert cache_dir("vocab") == tmp / "vocab" and (tmp / "vocab").is_dir()


def _sessions(tmp: Path) -> None:
    from engine.sessions.store import SessionStore

    st = SessionStore()
    try:
        assert st.path.resolve().parent == tmp.resolve() and st.path.exists()
    finally:
        st.close()


def _config(tmp: Path) -> None:
    from engine.sessions.profiles import load_config

    assert load_config().profiles == {}  # not written yet: no profiles, no error
    tmp.write_text('[profiles.p]\ntemperature = 0.3\n', encoding="utf-8")
    assert load_config().profile("p").temperature == 0.3


def _settings(tmp: Path) -> None:
    from app.settings import AppSettings
    from app.settings_file import save, settings_path

    assert settings_path() == tmp
    save(AppSettings())
    assert tmp.is_file()


def _keymap(tmp: Path) -> None:
    from app.keymap import keymap_path

    assert keymap_path() == tmp


def _exports(tmp: Path) -> None:
    from app.settings import default_export_dir

    assert default_export_dir() == tmp


def _memory(value: str) -> None:
    from engine.budget import available_bytes

    assert available_bytes() == int(value)


def _native(value: str) -> None:
    import os

    from engine.lm import nativestep

    assert nativestep.unavailable_reason() != "TOKENFORGE_NATIVE=0"  # any other value: allowed
    os.environ["TOKENFORGE_NATIVE"] = "0"  # (monkeypatch restores the variable afterwards)
    assert nativestep.library() is None and nativestep.unavailable_reason() == "TOKENFORGE_NATIVE=0"


CHECKS = {"TOKENFORGE_CACHE": ("dir", _cache), "TOKENFORGE_SESSIONS": ("dir", _sessions),
          "TOKENFORGE_CONFIG": ("file", _config), "TOKENFORGE_SETTINGS": ("file", _settings),
          "TOKENFORGE_KEYMAP": ("file", _keymap), "TOKENFORGE_EXPORTS": ("dir", _exports),
          "TOKENFORGE_MEMORY_BYTES": ("value", _memory), "TOKENFORGE_NATIVE": ("value", _native)}


#: the Ctrl+C test hook is exercised by every real-process test in tests/app/commands/test_interrupts.py
@pytest.mark.parametrize("name", sorted(_documented() - {"TOKENFORGE_TEST_SIGNAL_POINTS"}))
def test_each_variable_moves_what_the_readme_says(name, tmp_path, monkeypatch):
    assert name in CHECKS, f"{name} is documented but no test checks it"
    kind, check = CHECKS[name]
    target = tmp_path / ("folder" if kind == "dir" else "file.ext")
    value = "123456789" if kind == "value" else str(target)
    monkeypatch.setenv(name, value)
    check(value if kind == "value" else target)


@pytest.mark.parametrize("made", [False, True], ids=["new-name", "existing-file"])
def test_sessions_may_name_the_database_file(made, tmp_path, monkeypatch):
    """The table's second form: $TOKENFORGE_SESSIONS naming the database file (a new name with
    a suffix, or a file that exists) is that file; snapshots and locks go beside it."""
    from engine.sessions.location import sessions_dir
    from engine.sessions.store import SessionStore

    db = tmp_path / "notes.db"
    if made:
        SessionStore(db).close()
    monkeypatch.setenv("TOKENFORGE_SESSIONS", str(db))
    st = SessionStore()
    try:
        st.create("s", "m", "h", None, {})
        assert st.path == db and db.is_file() and sessions_dir() == tmp_path
    finally:
        st.close()
