"""Typed access to the tokenforge app from a screen or widget.

Textual's ``self.app`` is typed as a plain ``App``, so every use of the app's own parts (runner,
engine, settings, the loaded model) needed ``app: Any = self.app``. Screens and widgets mix this
in and use ``self.tokenforge_app`` instead: the same object, with the ``TokenforgeApp`` type."""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, cast

if TYPE_CHECKING:  # the app imports screens lazily; no import cycle at run time
    from app.app import TokenforgeApp
    from engine.lm.model import LoadedModel


class AppAccess:
    """Mixin for Screen and Widget subclasses (needs Textual's ``app`` property)."""

    @property
    def tokenforge_app(self) -> "TokenforgeApp":
        return cast("TokenforgeApp", self.app)  # type: ignore[attr-defined]

    @property
    def loaded_model(self) -> "Optional[LoadedModel]":
        """The app's model, or None while none is loaded (tests may inject a stand-in)."""
        return self.tokenforge_app.lm
