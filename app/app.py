"""TokenforgeApp: the shell. Screens (as modes), bindings, the command palette. The model's
background loading and speed figure live in app/model_state.py, the Ctrl+C policy, signals and
exits in app/quitting.py (mixins of the app).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, TypeVar

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen

from app import layout
from app.engines import Engine
from app.inert import notice
from app.model_state import ModelLifecycle
from app.quitting import QuitPolicy
from app.runner import Runner
from app.settings import AppSettings

if TYPE_CHECKING:  # importing the TUI must not import torch
    from engine.lm.model import LoadedModel

log = logging.getLogger("tokenforge.app")
S = TypeVar("S", bound=Screen)

SCREENS_ORDER = ("chat", "attack", "search", "dashboard", "settings", "sessions", "models")
SCREEN_KEYS = {"chat": "f2", "attack": "f3", "search": "f4", "dashboard": "f5", "settings": "f6",
               "sessions": "f7", "models": "f8"}


def _chat() -> Screen:
    from app.screens.chat import ChatScreen
    return ChatScreen()


def _attack() -> Screen:
    from app.screens.attack import AttackScreen
    return AttackScreen()


def _search() -> Screen:
    from app.screens.search import SearchScreen
    return SearchScreen()


def _dashboard() -> Screen:
    from app.screens.dashboard import DashboardScreen
    return DashboardScreen()


def _sessions() -> Screen:
    from app.screens.sessions import SessionsScreen
    return SessionsScreen()


def _models() -> Screen:
    from app.screens.models import ModelsScreen
    return ModelsScreen()


def _settings() -> Screen:
    from app.screens.settings import SettingsScreen
    return SettingsScreen()


#: F2–F8 share one footer entry ("f2 … f8 screens"; F1 and the palette name each): seven
#: named keys cut the footer even at 140 columns
SCREENS = Binding.Group("screens")


class TokenforgeApp(ModelLifecycle, QuitPolicy, App):
    """The tokenforge workbench. ``engine`` (app/engines.py interface) and ``lm`` may be injected."""

    CSS_PATH = "app.tcss"
    TITLE = "tokenforge"
    MODES = {"chat": _chat, "attack": _attack, "search": _search, "dashboard": _dashboard,
             "settings": _settings, "sessions": _sessions, "models": _models}
    DEFAULT_MODE = "chat"
    # screen classes for the layouts: 80 columns are "-narrow", 24 rows "-short" (app.tcss)
    HORIZONTAL_BREAKPOINTS = layout.HORIZONTAL_BREAKPOINTS
    VERTICAL_BREAKPOINTS = layout.VERTICAL_BREAKPOINTS
    BINDINGS = [
        # priority: a focused field's copy binding must never swallow the cancel / force quit
        Binding("ctrl+c", "interrupt", "Stop/Quit", id="interrupt", priority=True,
                tooltip="Stop running jobs; idle: copy the selection, else quit; "
                        "twice within 2 s: force quit"),
        Binding("ctrl+insert", "copy_selection", "Copy", id="copy", show=False,
                tooltip="Copy the selected text"),
        Binding("ctrl+q", "quit", "Quit", priority=True, id="quit", tooltip="Quit gracefully"),
        Binding("f1", "toggle_keys", "Keys", id="help", tooltip="Show or hide the key list"),
        Binding("f2", "show('chat')", "Chat", id="screen.chat", tooltip="Chat screen", group=SCREENS),
        Binding("f3", "show('attack')", "Attack", id="screen.attack", tooltip="AdvTok attack screen", group=SCREENS),
        Binding("f4", "show('search')", "Search", id="screen.search", tooltip="Tree search screen", group=SCREENS),
        Binding("f5", "show('dashboard')", "Dashboard", id="screen.dashboard",
                tooltip="Method benchmark dashboard", group=SCREENS),
        Binding("f6", "show('settings')", "Settings", id="screen.settings",
                tooltip="Model, sampling, timeouts, export folder",
                group=SCREENS),
        Binding("f7", "show('sessions')", "Sessions", id="screen.sessions",
                tooltip="Saved conversations: open, rename, delete, search",
                group=SCREENS),
        Binding("f8", "show('models')", "Models", id="screen.models",
                tooltip="Every model available offline; enter switches",
                group=SCREENS),
    ]

    def __init__(self, args: Any = None, *, engine: Any = None,
                 lm: "Optional[LoadedModel]" = None,
                 settings: Optional[AppSettings] = None, autoload: bool = True,
                 install_signals: bool = True) -> None:
        super().__init__()
        self.settings = settings or AppSettings.from_args(args)
        self.engine = engine if engine is not None else Engine(lm=lm)
        self.runner = Runner(self.post_message, timeouts=None)
        self.runner.timeouts = self.settings.timeouts  # shared: settings edits apply at once
        self.autoload = autoload
        self.install_signals = install_signals
        self.lm: Optional[LoadedModel] = None
        self.vocab: Any = None
        self.model_state = "none"      # none, loading, ready, failed
        self.model_error = ""
        self.vocab_state = "none"      # none, loading, ready, failed, unavailable
        self.speed: Any = None
        self._bg_jobs: dict[int, str] = {}
        self._listeners: list[Screen] = []
        self._last_ctrl_c = float("-inf")
        self._signals: list[int] = []
        self.quitting = False

    # -- lifecycle ----------------------------------------------------------------------------
    def on_mount(self) -> None:
        self.sub_title = "no model"
        self._apply_keymap()
        if self.settings.load_warning:
            notice(self, self.settings.load_warning, severity="warning", timeout=10)
        if self.install_signals:
            self._install_signal_handlers()
        if self.autoload:
            self.load_model()

    def _apply_keymap(self) -> None:
        from app.keymap import load_keymap

        keymap, error = load_keymap()
        if keymap:
            self.set_keymap(keymap)
        if error:
            notice(self, error, severity="warning", timeout=8)

    def on_unmount(self) -> None:
        self._remove_signal_handlers()

    # -- screens ------------------------------------------------------------------------------
    def register_screen_listener(self, screen: Screen) -> None:
        if screen not in self._listeners:
            self._listeners.append(screen)

    def unregister_screen_listener(self, screen: Screen) -> None:
        if screen in self._listeners:
            self._listeners.remove(screen)

    def notify_screens(self, make: Callable[[], Message], *, skip: Optional[Screen] = None) -> None:
        """Post a fresh ``make()`` message (e.g. ``ModelChanged``) to every open screen but
        ``skip``; each screen handles it in its own turn, so one screen's bug cannot break the
        others or the sender."""
        for s in list(self._listeners):
            if s is not skip:
                s.post_message(make())

    def open_screen(self, kind: type[S]) -> Optional[S]:
        """The open screen of this class (screens are created when first shown), or None."""
        return next((s for s in self._listeners if isinstance(s, kind)), None)

    def action_show(self, name: str) -> None:
        from app.screens.leave_settings import LeaveSettings

        if name not in self.MODES or self.current_mode == name or isinstance(self.screen, LeaveSettings):
            return
        ask = getattr(self.screen, "before_leave", None)  # a screen may ask first (Settings)
        if ask is None or not ask(lambda: self.switch_mode(name)):
            self.switch_mode(name)

    def action_toggle_keys(self) -> None:
        from textual.widgets import HelpPanel

        if self.screen.query(HelpPanel):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Palette entries, grouped by prefix; the current screen adds its own through
        ``palette_commands()`` (see app/screens/base.py)."""
        # Textual's own, less the two we give with our wording ("app: Quit", "help: Show or
        # hide keys"): one entry per action
        yield from (c for c in super().get_system_commands(screen)
                    if c.title not in ("Quit", "Keys"))
        for name in SCREENS_ORDER:
            yield SystemCommand(f"screen: Open {name}",
                                f"Switch to the {name} screen ({SCREEN_KEYS[name]})",
                                lambda n=name: self.action_show(n))
        own = getattr(screen, "palette_commands", None)
        if own is not None:
            yield from own()
        yield SystemCommand("jobs: Stop all running jobs", "Cancel every running engine job (Ctrl+C)",
                            lambda: self.runner.cancel_all("user"))
        yield SystemCommand("model: Reload", "Load the model named in Settings again",
                            self.load_model)
        yield SystemCommand("help: Show or hide keys", "The key list for the focused widget (f1)",
                            self.action_toggle_keys)
        yield SystemCommand("app: Quit tokenforge", "Stop jobs and quit (ctrl+q)", self.action_quit)

