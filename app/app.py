"""TokenforgeApp: the shell. Screens (as modes), bindings, the command palette, background model
loading, the Ctrl+C policy, signal handlers and the forced exit.

Ctrl+C (TUI.md §2): the first press cancels every running job ("Cancelling… Ctrl+C again to force
quit"); with nothing running it quits gracefully (threads get ``SHUTDOWN_GRACE`` s). A second
press within ``FORCE_WINDOW`` s restores the terminal and exits at once (``os._exit(130)``), even
when a thread is stuck inside one long model call. ``kill -INT`` behaves the same; SIGTERM and
SIGHUP quit gracefully; ctrl+q quits gracefully.

The Ctrl+C binding is a *priority* binding, so it beats the copy binding of a focused Input or
TextArea (which would otherwise take the key whenever text is selected, and the contract would
break). Copy keeps working where it cannot cost a cancel: with nothing running, a first Ctrl+C
with text selected copies it (and says so) instead of quitting; a second press still force-quits.
``ctrl+insert`` copies at any time.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import Any, Iterable, Optional

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from app.engines import Engine
from app.messages import (JobCancelled, JobFailed, JobFinished, JobProgressed, JobStarted,
                          JobStuck)
from app.runner import Runner
from app.settings import AppSettings
from app.terminal import restore_terminal
from app.widgets.phase_progress import PhaseProgress

log = logging.getLogger("tokenforge.app")

SCREENS_ORDER = ("chat", "attack", "search", "dashboard", "settings", "sessions")
SCREEN_KEYS = {"chat": "f2", "attack": "f3", "search": "f4", "dashboard": "f5", "settings": "f6",
               "sessions": "f7"}


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


def _chat_screen_type() -> type:
    from app.screens.chat import ChatScreen
    return ChatScreen


def _sessions() -> Screen:
    from app.screens.sessions import SessionsScreen
    return SessionsScreen()


def _settings() -> Screen:
    from app.screens.settings import SettingsScreen
    return SettingsScreen()


class TokenforgeApp(App):
    """The tokenforge workbench. ``engine`` (app/engines.py interface) and ``lm`` may be injected."""

    CSS_PATH = "app.tcss"
    TITLE = "tokenforge"
    MODES = {"chat": _chat, "attack": _attack, "search": _search, "dashboard": _dashboard,
             "settings": _settings, "sessions": _sessions}
    DEFAULT_MODE = "chat"
    FORCE_WINDOW = 2.0
    SHUTDOWN_GRACE = 2.0  # issue 6: threads finished or abandoned within 2 s
    BINDINGS = [
        # priority: a focused field's copy binding must never swallow the cancel / force quit
        Binding("ctrl+c", "interrupt", "Stop/Quit", id="interrupt", priority=True,
                tooltip="Stop running jobs; idle: copy the selection, else quit; "
                        "twice within 2 s: force quit"),
        Binding("ctrl+insert", "copy_selection", "Copy", id="copy", show=False,
                tooltip="Copy the selected text"),
        Binding("ctrl+q", "quit", "Quit", priority=True, id="quit", tooltip="Quit gracefully"),
        Binding("f1", "toggle_keys", "Keys", id="help", tooltip="Show or hide the key list"),
        Binding("f2", "show('chat')", "Chat", id="screen.chat", tooltip="Chat screen"),
        Binding("f3", "show('attack')", "Attack", id="screen.attack", tooltip="AdvTok attack screen"),
        Binding("f4", "show('search')", "Search", id="screen.search", tooltip="Tree search screen"),
        Binding("f5", "show('dashboard')", "Dashboard", id="screen.dashboard",
                tooltip="Method benchmark dashboard"),
        Binding("f6", "show('settings')", "Settings", id="screen.settings",
                tooltip="Model, sampling, timeouts, export folder"),
        Binding("f7", "show('sessions')", "Sessions", id="screen.sessions",
                tooltip="Saved conversations: open, rename, delete, search"),
    ]

    def __init__(self, args: Any = None, *, engine: Any = None, lm: Any = None,
                 settings: Optional[AppSettings] = None, autoload: bool = True,
                 install_signals: bool = True) -> None:
        super().__init__()
        self.settings = settings or AppSettings.from_args(args)
        self.engine = engine if engine is not None else Engine(lm=lm)
        self.runner = Runner(self.post_message, timeouts=None)
        self.runner.timeouts = self.settings.timeouts  # shared: settings edits apply at once
        self.autoload = autoload
        self.install_signals = install_signals
        self.lm: Any = None
        self.vocab: Any = None
        self.model_state = "none"      # none, loading, ready, failed
        self.model_error = ""
        self.vocab_state = "none"      # none, loading, ready, failed, unavailable
        self.speed: Any = None
        self._bg_jobs: dict[int, str] = {}
        self._listeners: list[Any] = []
        self._last_ctrl_c = float("-inf")
        self._signals: list[int] = []
        self.quitting = False

    # -- lifecycle ----------------------------------------------------------------------------
    def on_mount(self) -> None:
        self.sub_title = "no model"
        self._apply_keymap()
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
            self.notify(error, severity="warning", timeout=8)

    def on_unmount(self) -> None:
        self._remove_signal_handlers()

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGINT, self._on_sigint)
            self._signals.append(signal.SIGINT)
            for s in (signal.SIGTERM, signal.SIGHUP):
                loop.add_signal_handler(s, self._on_sigterm)
                self._signals.append(s)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
            log.warning("signal handlers not installed")

    def _remove_signal_handlers(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        for s in self._signals:
            try:
                loop.remove_signal_handler(s)
            except Exception:
                pass
        self._signals.clear()

    def _on_sigint(self) -> None:
        self.action_interrupt()

    def _on_sigterm(self) -> None:
        self.call_next(self.action_quit)

    # -- screens ------------------------------------------------------------------------------
    def register_screen_listener(self, screen: Any) -> None:
        if screen not in self._listeners:
            self._listeners.append(screen)

    def unregister_screen_listener(self, screen: Any) -> None:
        if screen in self._listeners:
            self._listeners.remove(screen)

    def _each_screen(self, method: str) -> None:
        for s in list(self._listeners):
            try:
                getattr(s, method)()
            except Exception:  # one screen's bug must not break the others
                log.exception("%s.%s failed", type(s).__name__, method)

    def action_show(self, name: str) -> None:
        if name in self.MODES and self.current_mode != name:
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
        yield from super().get_system_commands(screen)
        for name in SCREENS_ORDER:
            yield SystemCommand(f"screen: Open {name}",
                                f"Switch to the {name} screen ({SCREEN_KEYS[name]})",
                                lambda n=name: self.action_show(n))
        own = getattr(screen, "palette_commands", None)
        if own is not None:
            yield from own()
        if not isinstance(screen, _chat_screen_type()):
            yield SystemCommand("chat: New conversation", "Clear the chat and start over (ctrl+n)",
                                lambda: self._chat_action("new_chat"))
            yield SystemCommand("chat: Export conversation",
                                "Write the chat as Markdown and JSON (ctrl+e)",
                                lambda: self._chat_action("export"))
        yield SystemCommand("jobs: Stop all running jobs", "Cancel every running engine job (Ctrl+C)",
                            lambda: self.runner.cancel_all("user"))
        yield SystemCommand("model: Reload", "Load the model named in Settings again",
                            self.load_model)
        yield SystemCommand("help: Show or hide keys", "The key list for the focused widget (f1)",
                            self.action_toggle_keys)
        yield SystemCommand("app: Quit tokenforge", "Stop jobs and quit (ctrl+q)", self.action_quit)

    def _chat_action(self, action: str) -> None:
        from app.screens.chat import ChatScreen

        for s in self._listeners:
            if isinstance(s, ChatScreen):
                self.action_show("chat")
                self.call_later(getattr(s, f"action_{action}"))
                return

    # -- model --------------------------------------------------------------------------------
    def load_model(self) -> None:
        """(Re)load the model named in settings in the background; chat waits for it."""
        s = self.settings
        for j in self.runner.running():
            if j.kind in ("chat", "speed", "advtok", "tree", "bench", "load"):
                j.cancel("user")
        self.model_state = "loading"
        self.model_error = ""
        self.sub_title = f"loading {s.model}…"
        job = self.runner.start("load", self.engine.load_model, s.model, device=s.device,
                                dtype=s.dtype, trust_remote_code=s.trust_remote_code,
                                engine_path=s.engine_path, params={"model": s.model})
        self._bg_jobs[job.id] = "load"
        self._each_screen("model_changed")

    def _after_load(self, lm: Any) -> None:
        if self.settings.context_size:  # a profile's context size: never above the model's
            lm.context_length = min(int(lm.context_length), int(self.settings.context_size))
        self.lm = lm
        self.model_state = "ready"
        self.sub_title = lm.describe()
        self._each_screen("model_changed")
        job = self.runner.start("speed", self.engine.measure_speed, lm, params={"tokens": 8})
        self._bg_jobs[job.id] = "speed"
        if self.engine.vocab_available():
            self.vocab_state = "loading"
            job = self.runner.start("vocab", self.engine.load_vocab, lm, needs_model=False)
            self._bg_jobs[job.id] = "vocab"
        else:
            self.vocab_state = "unavailable"

    def preempt_probe(self) -> None:
        """A user job needs the model: stop the speed probe instead of making the user wait for
        it (the timeouts then come from the first long enough chat answer, see record_speed)."""
        for j in self.runner.running("speed"):
            j.cancel("preempted")

    def record_speed(self, tok_s: float, tokens: int) -> None:
        """A real answer's decode speed, used when the probe did not run to completion."""
        if self.settings.measured_tok_s is None and tokens >= 8 and tok_s > 0:
            self.settings.apply_speed(tok_s, source="first answer")
            self._each_screen("settings_changed")

    # -- background job messages (load, speed, vocab) -----------------------------------------
    def _bg_widgets(self, job_id: int) -> list[PhaseProgress]:
        out = []
        for s in self._listeners:
            try:
                pp = s.query_one("#progress", PhaseProgress)
            except Exception:
                continue
            if pp.state != "running" or pp.job_id in self._bg_jobs or pp.job_id == job_id:
                out.append(pp)
        return out

    def on_job_started(self, m: JobStarted) -> None:
        if m.job_id in self._bg_jobs:
            for pp in self._bg_widgets(m.job_id):
                pp.begin(m.kind, m.job_id)

    def on_job_progressed(self, m: JobProgressed) -> None:
        if m.job_id in self._bg_jobs:
            job = self.runner.jobs.get(m.job_id)
            for pp in self._bg_widgets(m.job_id):
                if pp.job_id != m.job_id or pp.state != "running":  # a screen opened mid-job
                    pp.begin(m.kind, m.job_id, started=job.started if job else None)
                pp.show(m.progress, m.job_id)

    def on_job_finished(self, m: JobFinished) -> None:
        kind = self._bg_jobs.pop(m.job_id, None)
        if kind is None:
            return
        msg = f"{kind} done in {m.elapsed:.1f} s"
        if kind == "load":
            self._after_load(m.result)
            msg = f"loaded {m.result.describe()} in {m.elapsed:.1f} s"
        elif kind == "speed":
            self.speed = m.result
            self.settings.apply_speed(getattr(m.result, "tok_s", None))
            msg = f"measured {m.result.tok_s:.1f} tok/s; timeouts derived from it"
            self._each_screen("settings_changed")
        elif kind == "vocab":
            self.vocab = m.result
            self.vocab_state = "ready"
            self._each_screen("model_changed")
        self._end_bg(m.job_id, "finished", msg)

    def on_job_cancelled(self, m: JobCancelled) -> None:
        kind = self._bg_jobs.pop(m.job_id, None)
        if kind is None:
            return
        if kind == "load":
            self.model_state = "failed" if self.lm is None else "ready"
            self.model_error = f"loading cancelled ({m.reason})"
            self.sub_title = self.lm.describe() if self.lm is not None else "no model"
            self._each_screen("model_changed")
        elif kind == "vocab":
            self.vocab_state = "none"
        self._end_bg(m.job_id, "cancelled", f"{kind} cancelled ({m.reason})")

    def on_job_failed(self, m: JobFailed) -> None:
        """Every failure (any screen's job bubbles here): one toast; the app stays usable."""
        text = m.message + (f"\nhint: {m.hint}" if m.hint else "")
        self.notify(text, title=f"{m.kind} failed", severity="error", timeout=8)
        kind = self._bg_jobs.pop(m.job_id, None)
        if kind == "load":
            self.model_state = "failed"
            self.model_error = m.message
            self.lm = None
            self.sub_title = "no model — F6 settings to choose one"
            self._each_screen("model_changed")
        elif kind == "vocab":
            self.vocab_state = "failed"
        if kind is not None:
            self._end_bg(m.job_id, "failed", m.message)

    def on_job_stuck(self, m: JobStuck) -> None:
        self.notify(f"The {m.kind} job did not stop within {m.seconds:.0f} s (stuck inside one "
                    "model call). Press Ctrl+C twice to force quit.", title="job stuck",
                    severity="error", timeout=15)

    def _end_bg(self, job_id: int, state: str, msg: str) -> None:
        for pp in self._bg_widgets(job_id):
            if pp.job_id == job_id:
                pp.end(state, msg, job_id)

    # -- quitting -----------------------------------------------------------------------------
    def action_interrupt(self) -> None:
        """Ctrl+C / SIGINT: cancel jobs; idle → graceful quit; twice within 2 s → force quit."""
        now, prev = time.monotonic(), self._last_ctrl_c
        self._last_ctrl_c = now
        log.info("interrupt (busy=%s, in_flight=%d)", self.runner.busy, self.runner.in_flight())
        # background work (load, speed probe, vocabulary) does not hold the app open: the user
        # pressing Ctrl+C with only that running wants to quit (shutdown cancels it)
        user_jobs = [j for j in self.runner.running() if j.id not in self._bg_jobs]
        if now - prev <= self.FORCE_WINDOW:
            self.force_quit(130)
        elif user_jobs:
            n = self.runner.cancel_all("user")
            self.notify(f"Cancelling {n} job(s)… press Ctrl+C again to force quit",
                        severity="warning", timeout=self.FORCE_WINDOW + 1)
        elif self.action_copy_selection():
            self.notify("Copied the selection · Ctrl+C again to force quit, ctrl+q to quit",
                        timeout=self.FORCE_WINDOW)
        else:
            self.notify("Quitting… press Ctrl+C again to force quit", timeout=self.FORCE_WINDOW)
            self._start_shutdown()

    def selected_text(self) -> str:
        """The text a copy would take: the focused field's selection, else the screen's (mouse)
        selection; "" when nothing is selected."""
        focused = self.focused
        text = getattr(focused, "selected_text", "") if focused is not None else ""
        if isinstance(text, str) and text:
            return text
        try:
            return self.screen.get_selected_text() or ""
        except Exception:  # no screen yet / a selection Textual cannot read
            return ""

    def action_copy_selection(self) -> bool:
        """Copy the selection to the clipboard (OSC 52 where the terminal allows); True if any."""
        text = self.selected_text()
        if text:
            self.copy_to_clipboard(text)
        return bool(text)

    async def action_quit(self) -> None:
        """ctrl+q / SIGTERM / SIGHUP: graceful (a worker, so the loop stays free for Ctrl+C)."""
        self._start_shutdown()

    def _start_shutdown(self) -> None:
        if self.quitting:
            return
        self.quitting = True
        self.run_worker(self._graceful_shutdown(), group="quit", exclusive=True, exit_on_error=False)

    async def _graceful_shutdown(self) -> None:
        log.info("shutdown: cancelling %d job(s)", len(self.runner.running()))
        ended = await self.runner.shutdown(grace=self.SHUTDOWN_GRACE)
        if not ended:
            log.warning("%d engine call(s) ignored cancel; exiting anyway", self.runner.in_flight())
        self.exit(return_code=0)

    def force_quit(self, code: int) -> None:
        """Restore the terminal and leave now, even if a thread is inside a long model call."""
        try:
            restore_terminal(self)
        finally:
            logging.shutdown()
            try:
                sys.stdout.flush()
            finally:
                os._exit(code)
