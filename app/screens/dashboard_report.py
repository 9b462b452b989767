"""The dashboard's live aggregate: re-read the runs JSONL (the truth on disk) off the event loop,
at most one read at a time and ≤ 1 Hz unless forced, and redraw the table, plots and legend. A
mixin of ``DashboardScreen``."""
from __future__ import annotations

import logging
import time
from typing import Any

from app.inert import tesc, text
from textual.widgets import DataTable, Input, Static, TabbedContent

from engine.errors import InputError

log = logging.getLogger("tokenforge.dashboard")

READ_EVERY = 1.0            # s between re-reads of the runs file while a run goes


def read_report(path: str) -> tuple[Any, list[list[str]]]:
    """Aggregate the runs JSONL and format its table rows (run off the event loop)."""
    from engine.bench.report import load_report, table_rows

    rep = load_report(path)
    return rep, table_rows(rep, labels=False)


class LiveReport:
    """Needs ``runs_path``, ``report``, ``reads``, ``_reading``, ``_pending``, ``_last_read``
    and ``say`` on the screen."""

    def refresh_report(self, force: bool = False, announce: str = "", loud: bool = False) -> bool:
        """Re-read the runs JSONL and redraw table and plots (≤ 1 Hz unless forced). The read
        runs in a daemon thread; at most one is in flight, and a forced refresh asked for
        meanwhile runs right after it. ``loud``: a read error replaces the message line (Load);
        otherwise (live refreshes, after a run) a missing or unreadable file leaves it alone.
        True when a read was started."""
        now = time.monotonic()
        if self._reading:
            if force:
                prev = self._pending or ("", False)
                self._pending = (announce or prev[0], loud or prev[1])
            return False
        if not force and now - self._last_read < READ_EVERY:
            return False
        self._last_read = now
        path = self.runs_path or self.query_one("#dash-out", Input).value.strip()
        self._reading = True
        self.run_worker(self._read_and_show(path, announce, loud), group="dash-report",
                        exit_on_error=False)
        return True

    async def _read_and_show(self, path: str, announce: str, loud: bool) -> None:
        app = self.tokenforge_app
        try:
            rep, rows = await app.runner.run_aside(read_report, path, name="bench-report")
        except InputError as e:
            if loud:
                self.say(f"[red]{tesc(str(e))}[/]")
        except Exception as e:  # noqa: BLE001 — a bad file must not take the screen down
            log.exception("reading %s failed", path)
            if loud:
                self.say(f"[red]cannot read {tesc(path)}: {tesc(type(e).__name__)}: "
                         f"{tesc(str(e))}[/]")
        else:
            if self.children:
                self.show_report(rep, rows)
                if announce:
                    self.say(tesc(announce))
        finally:
            self._reading = False
            self.reads += 1
            again, self._pending = self._pending, None
            if again is not None and self.children:
                self.refresh_report(force=True, announce=again[0], loud=again[1])

    def show_io(self, index: int) -> None:
        """The selected row's inputs (the prompt as the method fed it) and outputs, per query,
        and its per-query figures: what each aggregate cell is made of."""
        rep = self.report
        if rep is None or not (0 <= index < len(rep.rows)):
            return
        row = rep.rows[index]
        parts = [text(f"{row.key} — {row.label}\n", "bold", multiline=True)]
        for q, pq in row.per_query.items():
            ratio = pq.get("ratio", {}).get("total_s")
            kl = pq.get("quality", {}).get("kl_mean")
            figs = " · ".join(s for s in (
                f"total ×{ratio:.2f}" if ratio is not None and not row.speed_note else "",
                f"KL {kl:.3g}" if kl is not None else "") if s)
            head = f"\n{q}" + (f"  ({figs})" if figs else "") + "\n"
            parts.append(text(head, "bold", multiline=True))
            if pq.get("input"):
                parts.append(text("in:  ", "dim"))
                parts.append(text(str(pq["input"])[-1200:] + "\n", multiline=True))
            parts.append(text("out: ", "dim"))
            parts.append(text(str(pq.get("output") or "—") + "\n", multiline=True))
        from rich.text import Text

        self.query_one("#dash-io", Static).update(Text("").join(parts))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "dash-table":
            self.show_io(event.cursor_row)

    def show_report(self, rep: Any, rows: list[list[str]]) -> None:
        self.report = rep
        t = self.query_one("#dash-table", DataTable)
        t.clear()
        for cells in rows:
            t.add_row(*[text(c.replace("\n", " ")) for c in cells], height=None)  # data: no markup
        for pid in ("#plot-cost", "#plot-medians", "#plot-quality", "#plot-speed", "#plot-sweep"):
            self.query_one(pid).show(rep)  # type: ignore[attr-defined]
        # a runs file holding a compression sweep opens on its curve (once: the user's own tab
        # choice stands on later refreshes)
        has_sweep = bool(self.query_one("#plot-sweep").curves)  # type: ignore[attr-defined]
        if has_sweep and not getattr(self, "_sweep_opened", False):
            self.query_one("#dash-plots", TabbedContent).active = "tab-sweep"
        self._sweep_opened = has_sweep
        self.show_io(max(t.cursor_row, 0))
        legend = " · ".join(f"{r.key}: {r.label}" + (f" ({r.speed_note})" if r.speed_note else "")
                            for r in rep.rows)
        extra = "".join(f"\n[yellow]{tesc(str(p))}[/]" for p in (rep.problems + rep.notes)[:3])
        self.query_one("#dash-footer", Static).update(
            f"[dim]{tesc(legend)}\n{tesc(rep.footer())}[/]{extra}")
