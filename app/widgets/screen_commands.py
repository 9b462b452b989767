"""Command-palette entries for a screen's own actions (run, stop, export, …).

A screen lists ``COMMANDS = {ScreenActions}`` and defines ``palette_actions()`` returning
``(title, help, callback)`` triples; Textual merges them with the app's commands while that
screen is active, so every action reachable by a key is also in the palette (ctrl+p).
"""
from __future__ import annotations

from typing import Any, Callable

from textual.command import DiscoveryHit, Hit, Hits, Provider


class ScreenActions(Provider):
    """The calling screen's ``palette_actions()`` as palette commands."""

    def _items(self) -> list[tuple[str, str, Callable[[], Any]]]:
        fn = getattr(self.screen, "palette_actions", None)
        return list(fn()) if callable(fn) else []

    async def discover(self) -> Hits:
        for title, help_text, cb in self._items():
            yield DiscoveryHit(title, cb, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, cb in self._items():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), cb, help=help_text)
