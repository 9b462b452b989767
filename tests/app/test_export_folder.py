"""Issue 16.7: exports default to a per-user data folder (not the current directory), and the
dashboard's runs file follows the export folder set in Settings until the user types their own."""
from __future__ import annotations

from pathlib import Path

from textual.widgets import Button, Input

from app.settings import AppSettings, default_export_dir

from app_fakes import until


def test_default_export_folder_is_a_user_data_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("TOKENFORGE_EXPORTS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert default_export_dir() == tmp_path / "data" / "tokenforge" / "exports"
    assert AppSettings().export_dir == default_export_dir()
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_export_dir() == Path.home() / ".local" / "share" / "tokenforge" / "exports"
    monkeypatch.setenv("TOKENFORGE_EXPORTS", str(tmp_path / "mine"))
    assert default_export_dir() == tmp_path / "mine"
    assert not str(default_export_dir()).startswith(str(Path.cwd() / "tokenforge-exports"))


async def test_dashboard_runs_file_follows_the_export_folder(make_app, tmp_path):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        await pilot.press("f5")
        await until(pilot, lambda: app.current_mode == "dashboard")
        dash = app.screen
        out = dash.query_one("#dash-out", Input)
        assert out.value == str(app.settings.export_dir / "bench-runs.jsonl")
        await pilot.press("f6")
        await until(pilot, lambda: app.current_mode == "settings")
        app.screen.query_one("#set-export", Input).value = str(tmp_path / "elsewhere")
        app.screen.query_one("#apply", Button).press()
        await until(pilot, lambda: app.settings.export_dir == tmp_path / "elsewhere")
        await until(pilot, lambda: out.value == str(tmp_path / "elsewhere" / "bench-runs.jsonl"))
        out.value = str(tmp_path / "typed.jsonl")  # the user's own file stays
        app.settings.export_dir = tmp_path / "third"
        dash.settings_changed()
        assert out.value == str(tmp_path / "typed.jsonl")
