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

from app.inert import notice, styled, text

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
    """The saved session behind the chat screen's conversation (None until its first turn)."""

    def __init__(self) -> None:
        self.recorder: Any = None
        self.error = ""

    @property
    def name(self) -> Optional[str]:
        return None if self.recorder is None else self.recorder.name

    def forget(self) -> None:
        """A new conversation: the next turn starts a new saved session."""
        self.recorder = None

    def record(self, app: Any, session: Any, result: Any) -> None:
        """Worker thread: save the session's last turn. A failure is a note, never a lost answer."""
        if not hasattr(session, "fwd") or not getattr(session, "turns", None):
            return
        from engine.errors import EngineError
        from engine.sessions.persist import SessionRecorder

        try:
            store = session_store(app)
            if self.recorder is None or self.recorder.lm is not session.lm:
                name = store.unique_name(title_for(session.turns[0].user))
                self.recorder = SessionRecorder(session.lm, name, store, snapshot_store(app),
                                                system=session.system, sampling=session.sampling)
            self.recorder.record(session, result)
            self.error = ""
        except EngineError as e:  # a full disk, a busy database: the answer stays on screen
            self.error = str(e)
            result.notes.append(f"not saved: {e}")
            _tell(app, f"This turn was not saved: {e}")
        except Exception as e:  # a disk problem must not lose the answer on screen
            log.exception("saving the chat failed")
            self.error = str(e)
            result.notes.append(f"not saved: {type(e).__name__}: {e}")
            _tell(app, f"This turn was not saved: {type(e).__name__}: {e}")

    def open(self, app: Any, name: str, lm: LoadedModel, sampling: Any) -> tuple[Any, Any]:
        """Reopen ``name`` for ``lm``: (ChatSession, OpenReport); this becomes its recorder."""
        from engine.sessions.persist import open_saved

        session, report, rec = open_saved(lm, name, session_store(app), snapshot_store(app), sampling)
        self.recorder = rec
        return session, report


async def show_in_chat(screen: Any, session: Any, report: Any, name: str) -> None:
    """Put a reopened session's turns on the chat screen (its transcript, ready to continue)."""
    from textual.containers import VerticalScroll

    from app.widgets.chat_messages import AssistantMessage, UserMessage

    messages = screen.query_one("#messages", VerticalScroll)
    await messages.remove_children()
    screen.explorer.clear()
    pairs = []
    for t in screen.saved.recorder.all_turns:
        user = UserMessage(t.user, classes="user-message", markup=False)
        await messages.mount(user)
        msg = AssistantMessage(classes="assistant-message")
        await messages.mount(msg)
        m = t.metrics or {}
        await msg.finish(t.answer, styled("[dim]saved · {n} tokens[/]",
                                          n=m.get("new_tokens", len(t.answer_ids))))
        pairs.append((user, msg))
    if hasattr(screen, "exchanges"):  # the turns the model still has in its context
        screen.exchanges = pairs[len(pairs) - len(session.turns):]
    screen.session = session
    screen.session_lm = session.lm
    screen.reset_pending = False
    screen.turns = len(session.turns)
    screen.can_regenerate = bool(session.turns)
    screen.engine_error = ""
    how = {"snapshot": f"KV cache restored from snapshot ({report.restored_tokens} tokens)",
           "recomputed": "no usable KV snapshot: the history is prefilled once on the next turn",
           "re-encoded": "re-encoded from text", "new": "empty"}[report.how]
    line = f"session {name!r} · {how}" + "".join(f" · {n}" for n in report.notes
                                                  if "snapshot" not in n)
    messages.scroll_end(animate=False)
    screen.refresh_controls()
    screen.query_one("#chat-status").update(text(line))  # until the next refresh of the controls
    notice(screen, line, title="session opened", timeout=8)
