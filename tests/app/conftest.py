"""Fixtures for the TUI tests: animations and cursor blink off, the fake engine, and an app
factory that always cancels the runner's jobs so no thread outlives a test."""
from __future__ import annotations

from typing import Any

import pytest

from app_fakes import FakeEngine


@pytest.fixture(autouse=True)
def _no_animation(monkeypatch):
    import textual.constants

    monkeypatch.setattr(textual.constants, "TEXTUAL_ANIMATIONS", "none", raising=False)
    from textual.widgets import Input

    monkeypatch.setattr(Input, "cursor_blink", False, raising=False)


@pytest.fixture(autouse=True)
def _no_user_keymap(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKENFORGE_KEYMAP", str(tmp_path / "no-keymap.json"))


@pytest.fixture
def fake_engine():
    return FakeEngine


@pytest.fixture
def make_app(tmp_path):
    """Factory: TokenforgeApp with an injected engine, exports into tmp_path. ``app.toasts``
    keeps the text of every toast shown: a toast expires after its timeout, which a loaded
    machine can pass before the test looks at ``app._notifications``."""
    from app.app import TokenforgeApp
    from app.settings import AppSettings

    apps: list[Any] = []

    def factory(engine: Any = None, lm: Any = None, **kw: Any) -> Any:
        settings = AppSettings()
        settings.export_dir = tmp_path / "exports"
        if engine is not None and not isinstance(engine, FakeEngine):
            # the real engine (tiny model): derived timeouts follow the measured speed with a
            # 30 s floor, which a loaded machine can pass on a tiny-model grid or search; the
            # timeout tests drive the fake engine and set their own
            for kind in list(settings.timeouts):
                settings.set_user_timeout(kind, None)
        kw.setdefault("install_signals", False)
        app = TokenforgeApp(engine=engine if engine is not None else FakeEngine(), lm=lm,
                            settings=settings, **kw)
        app.toasts = []
        shown = app.notify  # screens and widgets call app.notify: record, then show

        def notify(message: Any, *a: Any, **k: Any) -> Any:
            app.toasts.append(str(message))
            return shown(message, *a, **k)

        app.notify = notify
        apps.append(app)
        return app

    yield factory
    for app in apps:  # no thread may outlive its test
        for j in app.runner.jobs.values():
            j.cancel("shutdown")
