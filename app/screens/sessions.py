"""Saved sessions: every conversation is saved as it goes (app/saved_chat.py); this screen lists
them, most recent first, and opens, renames, deletes and searches them.

Keys (table focused): enter opens the session in the chat screen (its KV cache restored from a
snapshot when one is valid), r renames, d deletes (press twice; refused while a chat has the
session open: one writer per session), e exports Markdown, / searches the text of every
message across sessions. A session saved with other weights than the loaded model is marked; it
opens re-encoded from its text."""
from __future__ import annotations

import time
from typing import Any, Iterable, Optional

from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Input, Label, Static

from engine.errors import EngineError

from app.inert import notice, styled, text
from app.layout import NARROW_COLUMNS
from app.saved_chat import session_store
from app.screens.base import ToolScreen

CONFIRM_S = 3.0


def _ago(t: float) -> str:
    d = max(0.0, time.time() - t)
    if d < 90:
        return "just now"
    if d < 5400:
        return f"{d / 60:.0f} min ago"
    if d < 36 * 3600:
        return f"{d / 3600:.0f} h ago"
    return time.strftime("%Y-%m-%d", time.localtime(t))


class SessionsScreen(ToolScreen):
    """List, open, rename, delete and search saved conversations."""

    BINDINGS = [
        Binding("enter", "open", "Open", id="sessions.open", tooltip="Open in the chat screen"),
        Binding("r", "rename", "Rename", id="sessions.rename", tooltip="Rename the session"),
        Binding("d", "delete", "Delete", id="sessions.delete", tooltip="Delete (press twice)"),
        Binding("e", "export", "Export", id="sessions.export",
                tooltip="Write the session as Markdown into the export folder"),
        Binding("slash", "search", "Search", id="sessions.search",
                tooltip="Search the text of every message"),
        Binding("o", "open_here", "Open with loaded model", id="sessions.open_here", show=False,
                tooltip="Open a session made with another model with the loaded one"),
        Binding("l", "load_own", "Load its model", id="sessions.load_own", show=False,
                tooltip="Load the model a session was made with, then open it"),
    ]

    def __init__(self) -> None:
        super().__init__(id="sessions-screen")
        self.names: list[str] = []
        self._armed: tuple[str, float] = ("", 0.0)
        self.renaming: Optional[str] = None
        self.last_export: Any = None
        #: a session whose model is not the loaded one: (name, its model spec, its model id)
        self.pending: Optional[tuple[str, str, str]] = None
        self.waiting_for: Optional[tuple[str, str]] = None  # its own model is loading for it
        self._shown_columns: tuple[str, ...] = ()

    def palette_commands(self) -> Iterable[SystemCommand]:
        yield SystemCommand("sessions: Open", "Open the selected session in chat (enter)", self.action_open)
        yield SystemCommand("sessions: Rename", "Rename the selected session (r)", self.action_rename)
        yield SystemCommand("sessions: Delete", "Delete the selected session (d twice)", self.action_delete)
        yield SystemCommand("sessions: Search", "Search every message (/)", self.action_search)

    def compose_body(self) -> ComposeResult:
        with Vertical(id="sessions-main"):
            with Horizontal(classes="form-row"):
                yield Label("Search", classes="field-label")
                yield Input(id="session-search", placeholder="text in any message (empty: all sessions)")
            with Horizontal(classes="form-row", id="rename-row"):
                yield Label("Rename", classes="field-label")
                yield Input(id="session-rename", placeholder="new name — enter to apply, esc to cancel")
            yield DataTable(id="session-table", zebra_stripes=True, cursor_type="row")
            yield Static("", id="sessions-status", classes="status-line")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#rename-row").display = False
        self.refresh_list()
        self.query_one("#session-table", DataTable).focus()

    def on_screen_resume(self) -> None:
        self.refresh_list()

    def on_resize(self, event: Any) -> None:
        if self._columns_for(self.size.width) != self._shown_columns:
            self.refresh_list()

    @staticmethod
    def _columns_for(width: int) -> tuple[str, ...]:
        """The table's columns at this width: below 100 columns the model (the least useful
        here: the row says "(other weights)" when it matters) goes first."""
        if width < NARROW_COLUMNS:
            return ("Name", "Updated", "Turns", "First message / match")
        return ("Name", "Updated", "Model", "Turns", "First message / match")

    def _set_columns(self, t: DataTable) -> tuple[str, ...]:
        cols = self._columns_for(self.size.width)
        if cols != self._shown_columns:
            t.clear(columns=True)
            # fixed widths, the message takes the rest: a long name or model id (data) is cut
            # in its own cell instead of pushing the message off the screen
            fixed = ({"Name": 18, "Updated": 9, "Turns": 5} if self.size.width < NARROW_COLUMNS
                     else {"Name": 24, "Updated": 16, "Model": 24, "Turns": 5})
            rest = self.size.width - 4 - sum(w + 2 for w in fixed.values()) - 2
            for c in cols:
                t.add_column(c, key=c, width=fixed.get(c, max(12, rest)))
            self._shown_columns = cols
        return cols

    # -- listing --------------------------------------------------------------------------------
    def _store(self) -> Any:
        try:
            return session_store(self.tokenforge_app)
        except EngineError as e:
            self._error(e)
            return None

    def _status(self, line: Any) -> None:
        """A status line: the program's own words (a str without data) or a styled() Text."""
        self.query_one("#sessions-status", Static).update(line)

    def _error(self, e: Exception, what: str = "") -> None:
        hint = getattr(e, "hint", "")
        line = styled("[red]{w}{e}[/]", w=what, e=e)
        if hint:
            line.append_text(styled(" [dim]({h})[/]", h=hint))
        self._status(line)

    def refresh_list(self) -> None:
        if not self.children:
            return
        store = self._store()
        if store is None:
            return
        t = self.query_one("#session-table", DataTable)
        query = self.query_one("#session-search", Input).value.strip()
        keep = self.selected()
        cols = self._set_columns(t)
        t.clear()
        self.names = []
        current = getattr(self.loaded_model, "model", None)
        here = getattr(current, "_tokenforge_weights_hash", None)
        infos = {i.name: i for i in store.list()}
        if query:
            hits: dict[str, list[str]] = {}
            for name, role, snip in store.search(query):
                hits.setdefault(name, []).append(f"{role}: {snip}")
            rows = [(infos[n], f"{len(h)} match{'es' * (len(h) != 1)} · {h[0]}")
                    for n, h in hits.items() if n in infos]
        else:
            rows = [(i, i.preview) for i in infos.values()]
        for info, first in rows:  # names, model ids and messages are data: Text cells, inert
            model = info.model_id
            if info.problem:
                first = f"unreadable: {info.problem}"
            elif here is not None and info.weights_hash != here:
                model += " (other weights)"
            cells = {"Name": text(info.name), "Updated": _ago(info.updated), "Model": text(model),
                     "Turns": str(info.turns), "First message / match": text(first)}
            t.add_row(*(cells[c] for c in cols), key=info.name)
            self.names.append(info.name)
        if keep in self.names:
            t.move_cursor(row=self.names.index(keep))
        n = len(self.names)
        what = styled("{n} session{s}", n=n, s="s" * (n != 1))
        if query:
            what.append_text(styled(" matching {q!r}", q=query))
        self._status(what + (" · enter open · r rename · d delete · e export · / search" if n else
                             " · every chat is saved here as it goes"))

    def selected(self) -> Optional[str]:
        t = self.query_one("#session-table", DataTable)
        if not self.names or t.cursor_row is None or not 0 <= t.cursor_row < len(self.names):
            return None
        return self.names[t.cursor_row]

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "session-search":
            self.refresh_list()

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "session-search":
            self.query_one("#session-table", DataTable).focus()
        elif event.input.id == "session-rename":
            self._apply_rename(event.value)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.run_worker(self.action_open(), exclusive=True)

    # -- actions --------------------------------------------------------------------------------
    def action_search(self) -> None:
        self.query_one("#session-search", Input).focus()

    def action_rename(self) -> None:
        name = self.selected()
        if name is None:
            return
        self.renaming = name
        row = self.query_one("#rename-row")
        row.display = True
        inp = self.query_one("#session-rename", Input)
        inp.value = name
        inp.focus()

    def _apply_rename(self, new: str) -> None:
        old, store = self.renaming, self._store()
        if old is None or store is None:
            return
        from engine.sessions.writer_lock import rename_session

        chat = _chat_screen(self.tokenforge_app)
        rec = chat.saved.recorder if chat is not None and chat.saved.name == old else None
        if rec is not None and chat.busy:
            self._status("[yellow]the chat is answering in this session: rename it when the "
                         "answer ends (or Esc there)[/]")
            return
        try:  # under the writer lock: refused while another process writes it (named)
            new, lock = rename_session(store, old, new, held=rec.lock if rec is not None else None)
        except EngineError as e:
            self._error(e)
            return
        if rec is not None:  # the chat renamed its own session: it writes on under the new name
            rec.name, rec.lock = new, lock
        self._end_rename()
        self.refresh_list()
        notice(self, f"Renamed to {new!r}")

    def _end_rename(self) -> None:
        self.renaming = None
        self.query_one("#rename-row").display = False
        self.query_one("#session-table", DataTable).focus()

    def action_stop(self) -> None:
        if self.pending is not None and not self.busy:
            self.pending = None
            self.refresh_list()
            return
        if self.renaming is not None:
            self._end_rename()
            return
        super().action_stop()

    def action_delete(self) -> None:
        name, store = self.selected(), self._store()
        if name is None or store is None:
            return
        armed, at = self._armed
        if armed != name or time.monotonic() - at > CONFIRM_S:
            self._armed = (name, time.monotonic())
            self._status(styled("[yellow]press d again to delete {n!r}[/]", n=name))
            return
        self._armed = ("", 0.0)
        from app.saved_chat import snapshot_store
        from engine.sessions.writer_lock import delete_session

        chat = _chat_screen(self.tokenforge_app)
        if chat is not None and chat.saved.name == name:
            # the chat holds its writer lock: deleting it would leave the chat saving into a
            # session that is gone (one writer per session; another process is refused alike)
            self._status(styled("[yellow]{n!r} is open in the chat (F2), which saves into it: "
                                "ctrl+n there starts a new chat and lets it go; then d d "
                                "deletes it[/]", n=name))
            return
        try:  # under the writer lock: refused while another process writes it (named)
            delete_session(store, snapshot_store(self.tokenforge_app), name)
        except EngineError as e:
            self._error(e)
            return
        self.refresh_list()
        notice(self, f"Deleted {name!r}")

    def action_export(self) -> None:
        from engine.atomic import write_text
        from engine.export import unique_paths
        from engine.sessions.export import to_markdown

        app = self.tokenforge_app
        name, store = self.selected(), self._store()
        if name is None or store is None:
            return
        safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)[:60]
        (path,) = unique_paths(app.settings.export_dir, f"session-{safe}", (".md",))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text(path, to_markdown(store.get(name)))
        except (OSError, EngineError) as e:
            self._error(e, "export failed: ")
            return
        self.last_export = path
        self._status(styled("exported → {p}", p=path))
        notice(self, f"Exported to {path}", title="export", timeout=8)

    async def action_open(self, other_model: bool = False) -> None:
        """Open the selected session in chat, as this screen's job (its steps on the progress
        bar, Esc stops it). A session saved with other weights than the loaded model is not
        opened at once: the screen asks (o: with the loaded model, l: load its own first)."""
        app = self.tokenforge_app
        name = self.pending[0] if self.pending else self.selected()
        if name is None:
            return
        chat = _chat_screen(app)
        if app.lm is None or app.model_state != "ready" or chat is None:
            self._status("[yellow]no model loaded yet: the session opens once one is ready[/]")
            return
        if chat.busy or self.busy:
            self._status("[yellow]an answer is running in chat: Esc there first[/]")
            return
        self.pending = None
        self._status(styled("opening {n!r}…", n=name))
        self.start_job("chat", self._open, chat, name, app.lm, app.settings.sampling, other_model,
                       params={"open": name})

    def _open(self, chat: Any, name: str, lm: Any, cfg: Any, other_model: bool, *,
              progress: Any, cancel: Any) -> Any:
        """Worker thread: ("ask", name, model id, spec) when its model is not the loaded one,
        else (name, session, report)."""
        from engine.progress import report
        from engine.sessions.snapshot import weights_hash_for

        app = self.tokenforge_app
        saved = session_store(app).get(name)
        if not other_model and saved.nodes:
            report(progress, "open", 0, 3, "checking the model the session was made with")
            if weights_hash_for(lm) != saved.weights_hash:
                return ("ask", name, saved.model_id, saved.model_spec)
        session, rep = chat.saved.open(app, name, lm, cfg, progress=progress, cancel=cancel)
        return (name, session, rep)

    async def job_finished(self, m: Any) -> None:
        r = m.result
        if r[0] == "ask":
            _, name, model_id, spec = r
            self.pending = (name, spec, model_id)
            here = self.tokenforge_app.lm
            line = styled("[yellow]{n!r} was made with {m}, not with the loaded {h}.[/] ",
                          n=name, m=model_id, h=getattr(here, "name", "model"))
            if spec:
                line.append_text(styled("l: load {m} and open it · o: open it with {h} "
                                        "(its history re-encoded from text) · Esc: neither",
                                        m=model_id, h=getattr(here, "name", "the loaded model")))
            else:
                line.append_text(styled("o: open it with {h} (its history re-encoded from "
                                        "text; which files {m} came from was not saved) · Esc: "
                                        "neither", m=model_id,
                                        h=getattr(here, "name", "the loaded model")))
            self._status(line)
            return
        name, session, rep = r
        from app.saved_chat import show_in_chat

        chat = _chat_screen(self.tokenforge_app)
        self.tokenforge_app.action_show("chat")
        await show_in_chat(chat, session, rep, name)

    async def job_failed(self, m: Any) -> None:
        self._error(m.error)

    async def job_cancelled(self, m: Any) -> None:
        self._status("opening stopped: nothing changed")

    def action_open_here(self) -> None:
        """o: open the session asked about with the loaded model."""
        if self.pending:
            self.run_worker(self.action_open(other_model=True), exclusive=True)

    def action_load_own(self) -> None:
        """l: load the session's own model (the rest of the app switches to it too), then open
        the session once it is ready."""
        if not self.pending or not self.pending[1]:
            return
        name, spec, model_id = self.pending
        app = self.tokenforge_app
        self.waiting_for = (name, spec)
        app.settings.model = spec
        app.load_model()
        self._status(styled("loading {m} for {n!r}… (the session opens when it is ready)",
                            m=model_id, n=name))

    def model_changed(self) -> None:
        """The model this screen asked for is ready (or failed): open the session, or say so."""
        app = self.tokenforge_app
        if self.waiting_for is None or app.model_state == "loading":
            return
        name, spec = self.waiting_for
        self.waiting_for = None
        if app.model_state == "ready" and app.model_error == "":
            self.pending = (name, spec, "")
            self.run_worker(self.action_open(), exclusive=True)
        else:
            self.pending = None
            self._status(styled("[red]could not load {s}: {e}[/]", s=spec, e=app.model_error))


def _chat_screen(app: Any) -> Any:
    from app.screens.chat import ChatScreen

    return app.open_screen(ChatScreen)
