"""One rule for where user files live (engine/paths.py): each file's own variable wins, else the
XDG folder, else the home default. The profiles config, the settings file, the keymap and the
export folder all follow it (the keymap used to ignore $XDG_CONFIG_HOME)."""
from __future__ import annotations

from pathlib import Path

from engine.paths import config_file, data_dir


def test_every_config_file_follows_one_rule(monkeypatch, tmp_path):
    from app.keymap import keymap_path
    from app.settings import default_export_dir
    from app.settings_file import settings_path
    from engine.sessions.profiles import config_path

    for var in ("TOKENFORGE_CONFIG", "TOKENFORGE_SETTINGS", "TOKENFORGE_KEYMAP",
                "TOKENFORGE_EXPORTS", "XDG_CONFIG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = Path.home()
    assert config_path() == (home / ".config" / "tokenforge" / "config.toml", False)
    assert settings_path() == home / ".config" / "tokenforge" / "settings.json"
    assert keymap_path() == home / ".config" / "tokenforge" / "keymap.json"
    assert default_export_dir() == home / ".local" / "share" / "tokenforge" / "exports"

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    for path, name in ((config_path()[0], "config.toml"), (settings_path(), "settings.json"),
                       (keymap_path(), "keymap.json")):
        assert path == tmp_path / "xdg" / "tokenforge" / name
    assert default_export_dir() == tmp_path / "data" / "tokenforge" / "exports"

    monkeypatch.setenv("TOKENFORGE_CONFIG", str(tmp_path / "c.toml"))
    monkeypatch.setenv("TOKENFORGE_KEYMAP", "~/k.json")
    assert config_path() == (tmp_path / "c.toml", False)  # where it lives, not a must-exist
    assert keymap_path() == home / "k.json"  # ~ expanded
    assert config_path("~/flag.toml") == (home / "flag.toml", True)


def test_empty_variable_means_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("SOME_FILE", "")
    assert config_file("a.json", "SOME_FILE") == tmp_path / "tokenforge" / "a.json"
    monkeypatch.setenv("XDG_DATA_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert data_dir("exports") == tmp_path / "h" / ".local" / "share" / "tokenforge" / "exports"
