"""The dataset mode's ΔASR report: the headline table (ΔASR per judge and category with its
interval and n) and the detail table (each side's rates with their bounds), as
engine.advtok.asr_render draws them for ``attack report``, and its export — Markdown and CSV
side by side in the export folder, written by the same function as ``attack report
--markdown/--csv`` (asr_render.write_tables: each file whole or not at all). A refused disk is
one line under the button; every cell is inert text."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Button, DataTable, Static

from app.app_access import AppAccess
from app.inert import notice, tesc, text

#: export file names: <stem>-<time>.md and .csv
EXPORT_STEM = "asr-report"


class DatasetReport(AppAccess, Vertical):
    """The report of the last dataset run or judging, and its export."""

    DEFAULT_CSS = """
    DatasetReport { height: auto; }
    DatasetReport .ds-text { height: auto; }
    DatasetReport .ds-table { height: auto; max-height: 20; }
    DatasetReport #ds-export { margin-top: 1; }
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.report: Any = None
        self.exported: list[Path] = []

    def compose(self) -> ComposeResult:
        yield Static("", id="ds-report-title", classes="ds-text")
        yield DataTable(id="ds-report", classes="ds-table", zebra_stripes=True)
        yield DataTable(id="ds-detail", classes="ds-table", zebra_stripes=True)
        yield Static("", id="ds-report-foot", classes="ds-text")
        yield Button("Export report (Markdown + CSV)", id="ds-export", disabled=True,
                     tooltip="The report as attack report --markdown/--csv writes it, into the "
                             "export folder (ctrl+e)")
        yield Static("", id="ds-export-line", classes="ds-text")

    def show(self, rep: Any) -> None:
        """ΔASR per judge and category with intervals (asr_render's headline table) and the
        rates with their bounds (its detail table); None clears them."""
        self.report = rep
        head = self.query_one("#ds-report", DataTable)
        det = self.query_one("#ds-detail", DataTable)
        head.clear(columns=True)
        det.clear(columns=True)
        title = self.query_one("#ds-report-title", Static)
        foot = self.query_one("#ds-report-foot", Static)
        button = self.query_one("#ds-export", Button)
        button.disabled = rep is None
        button.display = rep is not None
        self.query_one("#ds-export-line", Static).update("")
        if rep is None:
            title.update("")
            foot.update("")
            return
        from engine.advtok.asr_render import detail, footer, headline
        from engine.advtok.asr_render import title as report_title

        for table, (headers, rows) in ((head, headline(rep)), (det, detail(rep))):
            table.add_columns(*(text(h) for h in headers))
            for r in rows:
                table.add_row(*(text(c) for c in r))
        title.update(text(report_title(rep), "bold"))
        foot.update(text("\n".join(footer(rep)), multiline=True))

    def cells(self) -> list[list[str]]:
        """The headline table's header and rows as plain strings (tests, copy)."""
        t = self.query_one("#ds-report", DataTable)
        rows = [[str(c.label) for c in t.columns.values()]]
        rows += [[str(c) for c in t.get_row_at(i)] for i in range(t.row_count)]
        return rows

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ds-export":
            event.stop()
            self.export()

    def export(self) -> Optional[list[Path]]:
        """The shown report as Markdown and CSV in the export folder (fresh time-stamped names,
        never replacing an earlier export). Returns the paths, None when nothing was written."""
        from engine.advtok.asr_render import write_tables
        from engine.errors import EngineError
        from engine.export import unique_paths

        line = self.query_one("#ds-export-line", Static)
        if self.report is None:
            self.notify("No report yet: run or judge a results file first", severity="warning")
            return None
        try:
            md, cs = unique_paths(self.tokenforge_app.settings.export_dir, EXPORT_STEM,
                                  (".md", ".csv"))
            write_tables(self.report, markdown=md, csv_path=cs)
        except (EngineError, OSError) as e:     # StorageError among them: one line, named path
            for p in (md, cs) if "cs" in locals() else ():
                try:                            # both names were fresh: a lone .md is ours
                    p.unlink(missing_ok=True)
                except OSError:
                    pass
            msg = " ".join(str(e).split())
            line.update(f"[red]export failed:[/] {tesc(msg)}")
            notice(self, f"export failed: {msg}", severity="error")
            return None
        self.exported = [md, cs]
        line.update(f"[green]report exported[/] → {tesc(str(md))} · {tesc(cs.name)}")
        notice(self, f"Report exported to {md} and {cs.name}", title="export", timeout=8)
        return self.exported
