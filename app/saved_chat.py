"""The link between the chat screen and the saved sessions: which saved session the current
conversation is, saving each turn (called on the chat worker thread, after the engine answered),
and reopening a saved session into the chat screen.

The store is opened once per app (``session_store``); a corrupt or foreign file is reported once
with a notification (the store has already kept it aside and started a fresh one). Saving needs a
real ``engine.lm.chat`` session; with another engine (the UI tests' fake) nothing is saved."""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

from app.inert import notice, text

log = logging.getLogger("tokenforge.sessions")


def session_store(app: Any) -> Any:
    """The app's SessionStore, opened on first use. Raises EngineError (e.g. StoreBusy)."""
    store = getattr(app, "_session_store", None)
    if store is None:
        from engine.sessions.store import SessionStore

        store = SessionStore()
        app._session_store = store
        if store.notice:
            app.call_from_thread(notice, app, store.notice, severity="warning", timeout=12) \
                if _off_ui(app) else notice(app, store.notice, severity="warning", timeout=12)
    return store


def _tell(app: Any, text: str) -> None:
    """An error toast (``App.notify`` is thread-safe; the status line is redrawn after a turn,
    so a failed save shown only there would flash by)."""
    notice(app, text, severity="error", timeout=12)


def snapshot_store(app: Any) -> Any:
    from engine.sessions.snapshot import SnapshotStore
    from engine.sessions.store import sessions_dir

    cap_mib = getattr(getattr(app, "settings", None), "snapshot_cap_mib", 512.0)
    return SnapshotStore(sessions_dir() / "snapshots", int(cap_mib * (1 << 20)))


def _off_ui(app: Any) -> bool:
    import threading

    return threading.get_ident() != getattr(app, "_thread_id", threading.get_ident())


def title_for(text: str) -> str:
    words = " ".join(text.split())[:40].strip()
    return words or time.strftime("chat %Y-%m-%d %H:%M")


class SavedChat:
    """The saved session behind the chat screen's conversation: a SessionRecorder attached to
    the ChatSession as its listener, so every exchange — a new message, a regenerate, a forced
    token, an edited message — is saved as it happens, by the engine's one path. The saved
    session is created on the first answer, named after its first message."""

    def __init__(self) -> None:
        self.recorder: Any = None
        self.error = ""

    @property
    def name(self) -> Optional[str]:
        return None if self.recorder is None else self.recorder.name

    def release(self) -> None:
        """Let go of the saved session's writer lock (the app is closing)."""
        if self.recorder is not None:
            self.recorder.release()

    def forget(self) -> None:
        """A new conversation: its first answer starts a new saved session (the old one's
        writer lock is let go, so another process may continue it)."""
        if self.recorder is not None:
            self.recorder.release()
            self.recorder.name = None
            self.recorder.snapshot = ""

    def attach(self, app: Any, session: Any) -> None:
        """Worker thread: save ``session`` from now on. Needs a real ``engine.lm.chat`` session
        (with the UI tests' fake nothing is saved)."""
        if not hasattr(session, "fwd"):
            return
        from engine.sessions.persist import SessionRecorder

        # the store is opened on the first answer (a failure then is a note on that answer, and
        # the next answer tries again)
        self.recorder = SessionRecorder(session.lm, None, lambda: session_store(app),
                                        lambda: snapshot_store(app), name_for=title_for,
                                        on_error=lambda why: self._failed(app, why))
        session.listener = self.recorder

    def _failed(self, app: Any, why: str) -> None:
        self.error = why
        _tell(app, f"This turn was not saved: {why}")

    def open(self, app: Any, name: str, lm: LoadedModel, sampling: Any, *, progress: Any = None,
             cancel: Any = None) -> tuple[Any, Any]:
        """Reopen ``name`` for ``lm``: (ChatSession, OpenReport); its recorder saves it on."""
        from engine.sessions.persist import open_saved

        if self.recorder is not None:  # this process's own lock on a session it reopens
            self.recorder.release()
        session, report, rec = open_saved(lm, name, session_store(app), snapshot_store(app),
                                          sampling, progress=progress, cancel=cancel)
        rec.on_error = lambda why: self._failed(app, why)
        rec.name_for = title_for
        self.recorder = rec
        return session, report


async def show_in_chat(screen: Any, session: Any, report: Any, name: str) -> None:
    """Put a reopened session on the chat screen: its path as the transcript (the same drawing
    as moving between variants), its last turn in the token explorer, ready to continue."""
    from app.screens.chat_transcript import render_path

    screen.session = session
    screen.session_lm = session.lm
    screen.reset_pending = False
    screen.engine_error = ""
    await render_path(screen)
    screen.explorer.answer_done(session)
    how = {"snapshot": f"KV cache restored from snapshot ({report.restored_tokens} tokens)",
           "recomputed": "no usable KV snapshot: the history is prefilled once on the next turn",
           "re-encoded": "re-encoded from text", "new": "empty"}[report.how]
    n = len(session.nodes)
    variants = n - len(session.path)
    line = f"session {name!r} · {how}" + (f" · {variants} other variant(s): [ / ] in the token "
                                           "explorer" if variants > 0 else "") + \
        "".join(f" · {note}" for note in report.notes if "snapshot" not in note)
    screen.refresh_controls()
    screen.query_one("#chat-status").update(text(line))  # until the next refresh of the controls
    notice(screen, line, title="session opened", timeout=8)
