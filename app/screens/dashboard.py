"""Dashboard screen: choose methods and a suite, run the (method × query × repeat) grid through
the runner (job kind "bench", timeout from settings), watch it fill, read the aggregate table and
terminal plots, and export PNGs + CSV + the aggregate as JSON (the one export envelope).

The form (app/screens/dashboard_grid.py) is validated on every change (methods, an optional
compression sweep — a method's declared ratio parameter at several values, run as
``bench --sweep`` runs it —, suite, query kinds, repeats, max new tokens, runs file): a bad
field shows one inline message and keeps Run disabled, as do a model that is not loaded and a
running job (Stop is enabled then), so nothing unvalidated reaches the engine (which
validates again). The valid form's grid size is handed to the settings, which derive the "bench"
timeout from it (methods × queries × (repeats + 1) runs of max new tokens ÷ measured tok/s ×
margin; shown in Settings, editable there).

The JSONL on disk is the truth: while a run goes, the screen re-reads it (pull, ≤ 1 Hz: plotext
draws on the UI thread, docs/tui.md) and re-aggregates, so the table and plots show exactly
what `tokenforge bench report` would. The read and the aggregation run off the event loop
(``runner.run_aside``: a daemon thread), at most one at a time, so a big runs file never stalls
keys or Ctrl+C. A rerun into the same file resumes. Engine calls go through ``app.engine``
(app/engines.py) and the runner; no torch at TUI startup.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

from app.inert import notice, tesc
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import (Button, DataTable, Input, Label, Select, SelectionList, Static,
                             TabbedContent, TabPane)

from app.messages import (JobCancelled, JobFailed, JobFinished, JobProgressed, JobStarted,
                          SettingsChanged)
from app.screens.base import ToolScreen
from app.screens.dashboard_form import (DEFAULT_METHODS, KINDS, TABLE_COLUMNS, WHAT,
                                        method_choices, parse_combinations, parse_runs_path,
                                        suites_available, sweep_choices, sweep_help)
from app.screens.dashboard_grid import ENGINE_MODULES, GridForm
from app.screens.dashboard_report import LiveReport
from app.settings import BenchGrid, fmt_duration
from app.validate import FieldCheck
from app.widgets.checks import CheckList
from app.widgets.engine_status import EngineStatus
from app.widgets.plots import CostQualityPlot, MedianBarsPlot, QualityPlot, SpeedContextPlot, SweepPlot

JOB_KIND = "bench"
class DashboardScreen(GridForm, LiveReport, ToolScreen):
    """Methods × suite grid, live aggregate table and plots, export."""

    BINDINGS = [
        Binding("escape", "stop", "Stop", id="dashboard.stop", tooltip="Stop the running grid"),
        Binding("ctrl+r", "run", "Run", id="dashboard.run", tooltip="Run the bench grid"),
        Binding("ctrl+l", "load", "Load runs", id="dashboard.load",
                tooltip="Aggregate the runs file"),
        Binding("ctrl+e", "export", "Export", id="dashboard.export", priority=True,
                tooltip="Write PNGs, CSV and JSON"),
    ]

    def __init__(self) -> None:
        super().__init__(id="dashboard-screen")
        self._runs_default_shown = ""
        self.purpose: Optional[str] = None  # "run" | "export" for the current job
        self.report: Any = None
        self.runs_path: Optional[str] = None
        self.engine_error = ""
        self.last_export: list[str] = []
        self._last_read = 0.0
        self._reading = False               # a report read is in flight (at most one)
        self._pending: Optional[tuple[str, bool]] = None  # forced re-read asked for meanwhile
        self.reads = 0                      # report reads completed (tests, diagnostics)
        self.sweep_run = False              # the running (or last) grid holds a sweep

    # ---- layout -----------------------------------------------------------------------------
    def compose_body(self) -> ComposeResult:
        with Horizontal(id="dashboard-main", classes="tool-main"):
            with VerticalScroll(id="dashboard-form"):
                yield EngineStatus(ENGINE_MODULES, JOB_KIND, WHAT, id="dashboard-status")
                yield Label("Methods")
                names = method_choices()
                yield CheckList[str](*[(n, n, n in DEFAULT_METHODS) for n in names],
                                         id="dash-methods")
                yield Label("Combinations (PROMPT+CACHE, comma-separated; each run as one method)")
                yield Input("", id="dash-combos", placeholder="e.g. prune-selfinfo+kv-fp8",
                            validators=[FieldCheck(parse_combinations)])
                yield Label("Sweep (optional): one method's ratio parameter at several values")
                yield Select(sweep_choices(), prompt="no sweep", allow_blank=True, id="dash-sweep")
                yield Input("", id="dash-sweep-values", placeholder="values, e.g. 64,128,256")
                yield Static("", id="dash-sweep-help", classes="status-line")
                yield Label("Suite")
                suites = suites_available()
                yield Select([(s, s) for s in suites], value=suites[0] if suites else Select.NULL,
                             allow_blank=not suites, id="dash-suite")
                yield Label("Query kinds")
                yield CheckList[str](*[(k, k, k in ("chat", "qa")) for k in KINDS], id="dash-kinds")
                yield Label("Repeats (≥ 1) · max new tokens")
                with Horizontal(classes="dash-row"):
                    yield Input("5", id="dash-repeats", validators=[FieldCheck(self._parse_repeats)])
                    yield Input("24", id="dash-mnt", validators=[FieldCheck(self._parse_mnt)])
                yield Label("Runs file (JSONL, appended; a rerun resumes)")
                self._runs_default_shown = self._default_runs()
                yield Input(self._runs_default_shown, id="dash-out",
                            validators=[FieldCheck(parse_runs_path)])
                yield Static("", id="dash-error", classes="inline-error")
                with Horizontal(classes="dash-row dash-buttons"):
                    yield Button("Run", id="dash-run", variant="primary", disabled=True)
                    yield Button("Stop", id="dash-stop", variant="error", disabled=True)
                with Horizontal(classes="dash-row dash-buttons"):
                    yield Button("Load", id="dash-load", disabled=True)
                    yield Button("Export", id="dash-export", disabled=True)
                yield Static("", id="dash-status", classes="status-line")
                yield Static("", id="dash-message")
            with Vertical(id="dashboard-results"):
                yield Static("[dim]no runs yet: choose methods and press Run, or Load a runs file[/]",
                             id="dash-grid")
                yield DataTable(id="dash-table", zebra_stripes=True, cursor_type="row")
                with TabbedContent(id="dash-plots"):
                    with TabPane("Cost vs quality", id="tab-cost"):
                        yield CostQualityPlot(id="plot-cost")
                    with TabPane("Ratios", id="tab-medians"):
                        yield MedianBarsPlot(id="plot-medians")
                    with TabPane("Quality", id="tab-quality"):
                        yield QualityPlot(id="plot-quality")
                    with TabPane("tok/s vs context", id="tab-speed"):
                        yield SpeedContextPlot(id="plot-speed")
                    with TabPane("Sweep", id="tab-sweep"):
                        yield SweepPlot(id="plot-sweep")
                    with TabPane("In / out", id="tab-io"):
                        with VerticalScroll(id="dash-io-scroll"):
                            yield Static("[dim]select a row of the table[/]", id="dash-io")
                yield Static("", id="dash-footer")

    def on_mount(self) -> None:
        super().on_mount()
        t = self.query_one("#dash-table", DataTable)
        t.add_columns(*TABLE_COLUMNS)
        self.query_one("#dashboard-form").styles.width = 44
        self.query_one("#dash-plots").styles.height = "1fr"
        self.query_one("#dash-table", DataTable).styles.height = "auto"
        self.query_one("#dash-table", DataTable).styles.max_height = 14
        for w in self.query(".dash-row"):
            w.styles.height = "auto"
            for child in w.query(Input):
                child.styles.width = "1fr"
            for b in w.query(Button):
                b.styles.width = "1fr"
                b.styles.min_width = 8
        self.query_one("#dash-methods").styles.height = "auto"
        self.query_one("#dash-kinds").styles.height = "auto"
        self.refresh_controls()

    def _default_runs(self) -> str:
        try:
            folder = self.tokenforge_app.settings.export_dir
        except Exception:  # noqa: BLE001 — composed outside the tokenforge app (tests)
            from app.settings import default_export_dir

            folder = default_export_dir()
        return str(Path(folder) / "bench-runs.jsonl")

    # ---- state → controls -------------------------------------------------------------------
    def model_changed(self) -> None:
        if self.children:
            self.query_one(EngineStatus).refresh_status()
            self.refresh_controls()

    def settings_changed(self) -> None:
        """The runs file follows the export folder while the user has not typed their own."""
        if self.children:
            out = self.query_one("#dash-out", Input)
            if out.value == self._runs_default_shown and not self.busy:
                out.value = self._runs_default_shown = self._default_runs()
        self.model_changed()

    def _timeout_text(self) -> str:
        app = self.tokenforge_app
        t = app.runner.timeout_for(JOB_KIND)
        how = ("set in Settings" if JOB_KIND in app.settings.user_timeouts
               else "derived from this grid; Settings F6")
        return f"timeout {fmt_duration(t)} ({how})"

    def _status_text(self, f: dict[str, Any]) -> str:
        why = self.engine_ready()
        if why:
            return f"[yellow]{tesc(why)}[/]"
        if not f:
            return f"[dim]{self._timeout_text()}[/]"
        g: BenchGrid = f["grid"]
        return (f"[dim]grid {tesc(g.describe())} = {g.runs:,} runs of {g.max_new_tokens} tokens"
                f" · {self._estimate_text()} · {self._timeout_text()} · records → "
                f"{tesc(f['out'])}[/]")

    def _estimate_text(self) -> str:
        """The run's expected duration before Run: the bench budget at the measured speed,
        without the timeout's safety margin."""
        app = self.tokenforge_app
        d = app.settings.timeout_details().get(JOB_KIND)
        if d is None or not d.raw_s or not d.margin:
            return "duration unknown"
        how = "measured" if d.measured else "assumed"
        return f"[b]est. ≈ {fmt_duration(d.raw_s / d.margin)}[/] at {d.tok_s:.1f} tok/s ({how})"

    def refresh_controls(self) -> None:
        if not self.children:
            return
        app = self.tokenforge_app
        f, err = self.form()
        blocked = self.engine_ready()
        busy = self.busy
        self.query_one("#dash-run", Button).disabled = bool(err or blocked) or busy
        self.query_one("#dash-stop", Button).disabled = not busy
        have_runs = self._runs_file() is not None
        self.query_one("#dash-load", Button).disabled = busy or not have_runs
        self.query_one("#dash-export", Button).disabled = busy or not have_runs
        self.query_one("#dash-error", Static).update(tesc(err or self.engine_error))
        sel = self.query_one("#dash-sweep", Select)
        self.query_one("#dash-sweep-help", Static).update(
            "" if sel.is_blank() else f"[dim]{tesc(sweep_help(str(sel.value)))}[/]")
        if not err and app.settings.set_bench_grid(f["grid"]):
            app.notify_screens(SettingsChanged, skip=self)  # Settings shows the new derivation
        self.query_one("#dash-status", Static).update(self._status_text(f))

    def on_input_changed(self, event: Input.Changed) -> None:
        self.engine_error = ""
        self.refresh_controls()

    def on_select_changed(self, event: Select.Changed) -> None:
        self.refresh_controls()

    def on_selection_list_selected_changed(self, event: SelectionList.SelectedChanged) -> None:
        self.refresh_controls()

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        self.action_run()

    def on_button_pressed(self, e: Button.Pressed) -> None:
        {"dash-run": self.action_run, "dash-stop": self.action_stop, "dash-load": self.action_load,
         "dash-export": self.action_export}.get(e.button.id or "", lambda: None)()

    def palette_commands(self) -> Iterable[SystemCommand]:
        yield SystemCommand("dashboard: Run bench grid",
                            "Run the dashboard's methods × suite grid (ctrl+r)", self.action_run)
        yield SystemCommand("dashboard: Load bench runs",
                            "Aggregate the runs file into the table and plots (ctrl+l)",
                            self.action_load)
        yield SystemCommand("dashboard: Export bench PNG + CSV + JSON",
                            "Write the plots as PNGs, the table as CSV and the aggregate as "
                            "JSON (ctrl+e)", self.action_export)
        yield SystemCommand("dashboard: Stop bench run",
                            "Stop the running grid; finished records are kept (escape)",
                            self.action_stop)

    def say(self, text: str) -> None:
        self.query_one("#dash-message", Static).update(text)

    # ---- actions ----------------------------------------------------------------------------
    def action_run(self) -> None:
        app = self.tokenforge_app
        if self.busy:
            self.notify("A dashboard job is running: Esc to stop it first", severity="warning")
            return
        f, err = self.form()
        blocked = self.engine_ready()
        if err or blocked:
            self.refresh_controls()
            self.query_one("#dash-error", Static).update(tesc(err or blocked or ""))
            return
        cfg = f["cfg"]
        why = self._instances_problem(cfg)
        if why:
            self.query_one("#dash-error", Static).update(tesc(why))
            return
        from app.settings import over_timeout

        g = f["grid"]
        late = over_timeout("this grid", g.runs * g.max_new_tokens, app.settings.measured_tok_s,
                            app.runner.timeout_for(JOB_KIND))
        if late:
            notice(self, late, severity="warning", timeout=10)
        self.engine_error = ""
        self.purpose = "run"
        self.runs_path = f["out"]
        self.sweep_run = bool(cfg.get("sweeps"))
        shown = dict(cfg)
        if self.sweep_run:
            self._sweep_opened = False  # the Sweep tab opens on the new curve
            shown["sweeps"] = [sw.spec for sw in cfg["sweeps"]]
        self.start_job(JOB_KIND, app.engine.bench, app.lm, cfg, f["out"], params=shown)
        swept = "".join(f" + sweep {sw.spec}" for sw in cfg.get("sweeps", []))
        self.say(f"running {tesc(', '.join(cfg['methods']) + swept)} on {tesc(cfg['suite'])} "
                 f"({tesc(', '.join(cfg['kinds']))}) × {cfg['repeats']} → {tesc(f['out'])} · "
                 f"{self._timeout_text()} · Esc stops (finished records are kept)")
        self.refresh_controls()

    def _idle_runs_file(self, doing: str) -> Optional[Path]:
        """The runs file for Load/Export, or None (with the reason shown) while busy or missing."""
        if self.busy:
            self.notify(f"Wait for the dashboard job to finish (or Esc) before {doing}",
                        severity="warning")
            return None
        path = self._runs_file()
        if path is None:
            self.query_one("#dash-error", Static).update(tesc(
                f"no runs file at {self.query_one('#dash-out', Input).value.strip()}"))
        return path

    def action_load(self) -> None:
        path = self._idle_runs_file("loading")
        if path is None:
            return
        self.runs_path = str(path)
        self.refresh_report(force=True, announce=f"loaded {path}", loud=True)

    def action_export(self) -> None:
        app = self.tokenforge_app
        path = self._idle_runs_file("exporting")
        if path is None:
            return
        if not hasattr(app.engine, "bench_export"):
            self.notify("export is not available with this engine", severity="warning")
            return
        folder = str(Path(app.settings.export_dir))
        self.purpose = "export"
        self.start_job(JOB_KIND, app.engine.bench_export, str(path), folder,
                       params={"runs": str(path)}, needs_model=False)
        self.say(f"exporting {tesc(str(path))} → {tesc(folder)}…")
        self.refresh_controls()

    # ---- job messages -----------------------------------------------------------------------
    def job_started(self, m: JobStarted) -> None:
        if self.purpose == "run":
            self.query_one("#dash-grid", Static).update("starting: warm-up and baseline references…")
        self.refresh_controls()

    def on_job_progressed(self, m: JobProgressed) -> None:
        # ToolScreen's handler runs after this one (Textual walks the MRO) and feeds the widget
        if not self._mine(m) or self.purpose != "run":
            return
        p = m.progress
        if p.phase == "calibrate":  # a method's one-off calibration inside the grid (LaRoSA)
            self.query_one("#dash-grid", Static).update(
                f"calibrating: {p.step:,}/{p.total or 0:,} tokens · layers "
                f"{tesc(str(p.metrics.get('layers', '–')))} of window "
                f"{tesc(str(p.metrics.get('window', '–')))} (once; cached for later runs)")
        elif p.total:
            md = p.metrics
            where = (f" · now {md.get('method')} · {md.get('prompt')} · repeat {int(md.get('repeat', 0)) + 1}"
                     if "method" in md else "")
            self.query_one("#dash-grid", Static).update(
                f"grid (method × query × repeat): {p.step}/{p.total}{tesc(where)}")
        self.refresh_report()

    async def job_finished(self, m: JobFinished) -> None:
        if self.purpose == "export":
            self.last_export = list(m.result)
            self.say("exported:\n" + tesc("\n".join(m.result)))
        else:
            s = m.result
            self.say(f"[green]{s.written} records[/], {s.skipped} resumed, {s.errors} errors → "
                     f"{tesc(str(s.out))}" + (" [yellow](stopped)[/]" if s.cancelled else ""))
            if self.sweep_run:
                self._sweep_opened = False  # the finished sweep's curve is shown
            self.refresh_report(force=True)
        self.purpose = None
        self.refresh_controls()

    async def job_cancelled(self, m: JobCancelled) -> None:
        what = "run" if self.purpose == "run" else "export"
        why = (f": the bench timeout ({fmt_duration(self.job.timeout if self.job else None)}, "
               "Settings F6) ran out" if m.reason == "timeout" else "")
        keep = " — finished records are kept; Run again to resume" if what == "run" else ""
        self.say(f"[yellow]{what} stopped ({tesc(m.reason)}){why}{keep}[/]")
        if self.purpose == "run":
            self.refresh_report(force=True)
        self.purpose = None
        self.refresh_controls()

    async def job_failed(self, m: JobFailed) -> None:
        self.engine_error = m.message + (f" — {m.hint}" if m.hint else "")
        self.say(f"[red]failed: {tesc(m.message)}[/]")
        self.purpose = None
        self.refresh_controls()
