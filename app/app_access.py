"""Typed access to the tokenforge app from a screen or widget.

Textual's ``self.app`` is typed as a plain ``App``, so every use of the app's own parts (runner,
engine, settings, the loaded model) needed ``app: Any = self.app``. Screens and widgets mix this
in and use ``self.tokenforge_app`` instead: the same object, typed by ``TokenforgeApp`` below,
the part of app.app.TokenforgeApp they use. A Protocol, so this module never imports the app
(which imports the screens): imports go one way."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Protocol, cast

if TYPE_CHECKING:
    from textual.screen import Screen

    from app.runner import Runner
    from app.settings import AppSettings
    from engine.lm.model import LoadedModel


class TokenforgeApp(Protocol):
    """What screens and widgets use of the app (app.app.TokenforgeApp is one)."""

    settings: "AppSettings"
    runner: "Runner"
    engine: Any
    lm: "Optional[LoadedModel]"
    model_state: str
    model_error: str

    def register_screen_listener(self, screen: "Screen") -> None: ...

    def unregister_screen_listener(self, screen: "Screen") -> None: ...

    def record_speed(self, tok_s: float, tokens: int) -> None: ...


class AppAccess:
    """Mixin for Screen and Widget subclasses (needs Textual's ``app`` property)."""

    @property
    def tokenforge_app(self) -> "TokenforgeApp":
        return cast("TokenforgeApp", self.app)  # type: ignore[attr-defined]

    @property
    def loaded_model(self) -> "Optional[LoadedModel]":
        """The app's model, or None while none is loaded (tests may inject a stand-in)."""
        return self.tokenforge_app.lm
