"""Model picker (F8): every model available offline (engine/sessions/discovery.py) with its
parameters, architecture, dtype, size on disk and whether the lean path supports it.

Enter switches to the selected model: the app's reload cancels every running job, the model
loads in the background with its progress shown here, and once it is ready the old model's
memory is released (garbage collected; on CUDA the allocator's cache emptied)."""
from __future__ import annotations

import asyncio
import gc
from typing import Any, Iterable, Optional

from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Label, Select, Static

from app.inert import styled, text
from app.layout import NARROW_COLUMNS
from app.screens.base import ToolScreen


def free_memory() -> None:
    """Drop what the previous model left behind."""
    gc.collect()
    try:
        import sys

        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


class ModelsScreen(ToolScreen):
    """Pick the model to work with."""

    BINDINGS = [
        Binding("enter", "switch", "Load", id="models.load", tooltip="Switch to the selected model"),
        Binding("ctrl+r", "rescan", "Rescan", id="models.rescan", tooltip="Look for models again"),
    ]

    def __init__(self) -> None:
        super().__init__(id="models-screen")
        self.entries: list[Any] = []
        self.switching: Optional[str] = None
        self._old: Any = None  # the model before the switch: still app.lm means it failed
        self.scanning = False
        self._shown_columns: tuple[str, ...] = ()

    def palette_commands(self) -> Iterable[SystemCommand]:
        yield SystemCommand("models: Load the selected model", "Switch models (enter)", self.action_switch)
        yield SystemCommand("models: Rescan", "Look for models again (ctrl+r)", self.action_rescan)

    def compose_body(self) -> ComposeResult:
        profiles = sorted(getattr(self.tokenforge_app.settings, "profiles", {}) or {})
        with Vertical(id="models-main"):
            with Horizontal(classes="form-row", id="profile-row"):
                yield Label("Profile", classes="field-label")
                current = getattr(self.tokenforge_app.settings, "profile", "")
                yield Select([(p, p) for p in profiles], id="profile-select",
                             value=current if current in profiles else Select.NULL,
                             prompt="no profile (config file: --config, $TOKENFORGE_CONFIG)"
                             if not profiles else "choose a profile")
            yield DataTable(id="model-table", zebra_stripes=True, cursor_type="row")
            yield Static("", id="models-status", classes="status-line")

    def on_mount(self) -> None:
        super().on_mount()
        t = self.query_one("#model-table", DataTable)
        self._set_columns(t)
        t.focus()
        self.action_rescan()
        self.set_interval(0.25, self._watch_load)

    def _status(self, line: Any) -> None:
        """The program's own words (markup str without data) or a styled() Text."""
        self.query_one("#models-status", Static).update(line)

    def action_rescan(self) -> None:
        if not self.scanning:
            self.scanning = True
            self._status("looking for models (bundled, cache, Hugging Face cache, config folders)…")
            self.run_worker(self._scan(), exclusive=True, group="scan")

    async def _scan(self) -> None:
        from engine.sessions.discovery import discover

        app = self.tokenforge_app
        dirs = list(getattr(app.settings, "model_dirs", []) or [])
        try:
            self.entries = await asyncio.to_thread(discover, dirs)
        finally:
            self.scanning = False
        self._fill()

    WIDE = ("", "Model", "Source", "Architecture", "Params", "Dtype", "Size", "Lean path")
    #: below 100 columns: what tells models apart and whether the lean path runs; the source,
    #: architecture and dtype go first (the Model name usually says them)
    NARROW = ("", "Model", "Params", "Size", "Lean path")

    def on_resize(self, event: Any) -> None:
        if self._columns_for(self.size.width) != self._shown_columns:
            if self.scanning:  # the scan fills the table when it ends
                self._set_columns(self.query_one("#model-table", DataTable))
            else:
                self._fill()

    def _columns_for(self, width: int) -> tuple[str, ...]:
        return self.NARROW if width < NARROW_COLUMNS else self.WIDE

    def _set_columns(self, t: DataTable) -> tuple[str, ...]:
        cols = self._columns_for(self.size.width)
        if cols != self._shown_columns:
            t.clear(columns=True)
            if cols is self.NARROW:  # fixed widths: the lean-path reason takes what is left
                fixed = {"": 1, "Model": 30, "Params": 7, "Size": 9}
                rest = self.size.width - 2 - sum(w + 2 for w in fixed.values()) - 2
                for c in cols:
                    t.add_column(c, key=c or "mark", width=fixed.get(c, max(8, rest)))
            else:
                for c in cols:
                    t.add_column(c, key=c or "mark")
            self._shown_columns = cols
        return cols

    def _fill(self) -> None:
        from engine.sessions.discovery import fmt_size

        t = self.query_one("#model-table", DataTable)
        cols = self._set_columns(t)
        t.clear()
        current = self.tokenforge_app.settings.model
        for e in self.entries:
            lean = {True: "yes", False: f"no: {e.lean_why}", None: "?" if not e.lean_why else e.lean_why}[e.lean]
            mark = "●" if e.spec == current else ""
            cells = {"": mark, "Model": text(e.name), "Source": text(e.source),
                     "Architecture": text(e.architecture), "Params": text(e.params_text()),
                     "Dtype": text(e.dtype), "Size": fmt_size(e.size_bytes), "Lean path": text(lean)}
            t.add_row(*(cells[c] for c in cols), key=e.spec)  # folder data: Text cells, inert
        n = len(self.entries)
        self._status(f"{n} model{'s' * (n != 1)} available offline · enter loads · ctrl+r rescans")

    def selected(self) -> Optional[Any]:
        t = self.query_one("#model-table", DataTable)
        if not self.entries or t.cursor_row is None or not 0 <= t.cursor_row < len(self.entries):
            return None
        return self.entries[t.cursor_row]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_switch()

    def action_switch(self) -> None:
        app = self.tokenforge_app
        e = self.selected()
        if e is None:
            return
        if app.model_state == "loading":
            self._status("[yellow]a model is loading: wait for it (or Ctrl+C to cancel it)[/]")
            return
        running = [j for j in app.runner.running() if j.kind not in ("speed", "vocab")]
        app.settings.model = e.spec
        self.switching = e.name
        self._old = app.lm
        app.load_model()  # cancels the running jobs, loads in the background
        note = f" · cancelled {len(running)} running job(s)" if running else ""
        self._status(styled("loading {n}…{note}", n=e.name, note=note))
        self._fill()

    def on_select_changed(self, event: Select.Changed) -> None:
        """Apply a config profile (app/profile_choice.py, the same path as Settings)."""
        from app.profile_choice import choose_profile

        app = self.tokenforge_app
        if event.select.id != "profile-select" or not isinstance(event.value, str):
            return
        old = app.lm
        changed, reload = choose_profile(app, event.value)
        if not changed:
            return
        if reload:
            self.switching, self._old = app.settings.model, old
        self._status(styled("profile {n!r} applied", n=event.value) +
                     (" · reloading the model" if reload else ""))

    def _watch_load(self) -> None:
        app = self.tokenforge_app
        if self.switching is None:
            return
        if app.model_state == "loading":
            self._status(styled("loading {m}… {t}", m=self.switching, t=app.sub_title))
        elif app.model_state == "ready" and self._old is not None and app.lm is self._old:
            self._status(styled("[red]could not load {m}: {e}[/] · kept {d}", m=self.switching,
                                e=app.model_error, d=app.lm.describe()))
            self.switching = self._old = None
        elif app.model_state == "ready":
            self._old = None
            free_memory()
            self._status(styled("[green]loaded {d}[/]", d=app.lm.describe()))
            self.switching = None
        elif app.model_state == "failed":
            self._status(styled("[red]could not load {m}: {e}[/]", m=self.switching, e=app.model_error))
            self.switching = None
