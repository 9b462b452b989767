"""Dashboard screen: choose methods and a suite, run the (method × query × repeat) grid through
the runner (job kind "bench"), watch it fill, read the aggregate table and terminal plots, and
export PNGs + CSV.

The JSONL on disk is the truth: while a run goes, the screen re-reads it (pull, ≤ 1 Hz, as
TUI.md §4 suggests for the dashboard) and re-aggregates, so the table and plots show exactly
what `tokenforge bench report` would. A rerun into the same file resumes. Engine imports stay
inside the job functions (no torch at TUI startup).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import (Button, DataTable, Input, Label, Select, SelectionList, Static,
                             TabbedContent, TabPane)

from engine.errors import InputError

from app.messages import JobCancelled, JobFailed, JobFinished, JobProgressed, JobStarted
from app.screens.base import ToolScreen
from app.validate import FieldCheck, parse_int
from app.widgets.engine_status import EngineStatus
from app.widgets.plots import CostQualityPlot, MedianBarsPlot, SpeedContextPlot

ENGINE_MODULES = ("engine.bench",)
JOB_KIND = "bench"
WHAT = "Method dashboard — methods × suite grid, aggregate table, terminal plots, PNG/CSV export"
KINDS = ("chat", "qa", "long", "prose")
DEFAULT_METHODS = ("baseline", "kv-reuse", "kv-fp8")
TABLE_COLUMNS = ("method", "prompt tok", "prefill s", "decode tok/s", "total s", "KV stored",
                 "KV peak", "KL nats/tok", "diverged", "ref NLL", "contains")


def suites_available() -> list[str]:
    """Shipped suite names, found without importing the engine's torch parts."""
    import engine

    return sorted(p.stem for p in (Path(engine.__file__).parent / "suites").glob("*.jsonl"))


def method_choices() -> list[str]:
    from engine.methods import method_names  # torch-free registry

    return method_names()


# ---- job functions (run in the runner's worker thread) -----------------------------------------

def bench_job(lm: Any, cfg: dict, out: str, *, progress: Any = None, cancel: Any = None) -> Any:
    """Run the grid; returns the BenchSummary (finished records stay on cancel)."""
    from engine.bench import BenchConfig, run_bench

    return run_bench(lm, BenchConfig(**cfg), out, progress=progress, cancel=cancel)


def export_job(runs: str, folder: str, *, progress: Any = None, cancel: Any = None) -> list[str]:
    """Aggregate the JSONL and write the PNGs and the CSV into ``folder``."""
    from engine.bench_report import load_report, write_csv, write_pngs
    from engine.progress import report

    report(progress, "bench", 0, 2, "aggregating")
    rep = load_report(runs)
    report(progress, "bench", 1, 2, "writing PNGs")
    paths = [str(p) for p in write_pngs(rep, folder, prefix=f"bench-{Path(runs).stem}")]
    paths.append(str(write_csv(rep, Path(folder) / f"bench-{Path(runs).stem}.csv")))
    report(progress, "bench", 2, 2, "exported")
    return paths


class DashboardScreen(ToolScreen):
    """Methods × suite grid, live aggregate table and plots, export."""

    BINDINGS = [
        Binding("ctrl+r", "run", "Run", id="dashboard.run", tooltip="Run the bench grid"),
        Binding("ctrl+l", "load", "Load runs", id="dashboard.load", tooltip="Aggregate the runs file"),
        Binding("ctrl+e", "export", "Export", id="dashboard.export", tooltip="Write PNGs and CSV"),
    ]

    def __init__(self) -> None:
        super().__init__(id="dashboard-screen")
        self.purpose: Optional[str] = None  # "run" | "export" for the current job
        self.report: Any = None
        self._last_read = 0.0
        self._grid_total: Optional[int] = None

    # ---- layout -----------------------------------------------------------------------------
    def compose_body(self) -> ComposeResult:
        with Horizontal(id="dashboard-main", classes="tool-main"):
            with VerticalScroll(id="dashboard-form"):
                yield EngineStatus(ENGINE_MODULES, JOB_KIND, WHAT, id="dashboard-status")
                yield Label("Methods")
                names = method_choices()
                yield SelectionList[str](*[(n, n, n in DEFAULT_METHODS) for n in names],
                                         id="dash-methods")
                yield Label("Suite")
                suites = suites_available()
                yield Select([(s, s) for s in suites], value=suites[0] if suites else Select.BLANK,
                             allow_blank=not suites, id="dash-suite")
                yield Label("Query kinds")
                yield SelectionList[str](*[(k, k, k in ("chat", "qa")) for k in KINDS], id="dash-kinds")
                yield Label("Repeats (≥ 1) · max new tokens")
                with Horizontal(classes="dash-row"):
                    yield Input("5", id="dash-repeats", validators=[FieldCheck(self._parse_repeats)])
                    yield Input("24", id="dash-mnt", validators=[FieldCheck(self._parse_mnt)])
                yield Label("Runs file (JSONL, appended; a rerun resumes)")
                yield Input(self._default_runs(), id="dash-out")
                with Horizontal(classes="dash-row"):
                    yield Button("Run", id="dash-run", variant="primary")
                    yield Button("Load", id="dash-load")
                    yield Button("Export", id="dash-export")
                yield Static("", id="dash-message")
            with Vertical(id="dashboard-results"):
                yield Static("[dim]no runs yet: choose methods and press Run, or Load a runs file[/]",
                             id="dash-grid")
                yield DataTable(id="dash-table", zebra_stripes=True, cursor_type="row")
                with TabbedContent(id="dash-plots"):
                    with TabPane("Cost vs quality", id="tab-cost"):
                        yield CostQualityPlot(id="plot-cost")
                    with TabPane("Medians", id="tab-medians"):
                        yield MedianBarsPlot(id="plot-medians")
                    with TabPane("tok/s vs context", id="tab-speed"):
                        yield SpeedContextPlot(id="plot-speed")
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
        self.query_one("#dash-methods").styles.height = "auto"
        self.query_one("#dash-kinds").styles.height = "auto"

    def _default_runs(self) -> str:
        try:
            folder = self.app.settings.export_dir  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 — composed outside the tokenforge app (tests)
            folder = "tokenforge-exports"
        return str(Path(folder) / "bench-runs.jsonl")

    @staticmethod
    def _parse_repeats(text: str) -> int:
        return parse_int(text, "repeats", 1, 100)

    @staticmethod
    def _parse_mnt(text: str) -> int:
        return parse_int(text, "max new tokens", 1, 1024)

    # ---- app hooks --------------------------------------------------------------------------
    def model_changed(self) -> None:
        if self.is_mounted:
            self.query_one(EngineStatus).refresh_status()

    def settings_changed(self) -> None:
        self.model_changed()

    # ---- actions ----------------------------------------------------------------------------
    def on_button_pressed(self, e: Button.Pressed) -> None:
        {"dash-run": self.action_run, "dash-load": self.action_load,
         "dash-export": self.action_export}.get(e.button.id or "", lambda: None)()

    def say(self, text: str) -> None:
        self.query_one("#dash-message", Static).update(text)

    def form(self) -> dict:
        """The run configuration from the form; an InputError names the first bad field."""
        methods = list(self.query_one("#dash-methods", SelectionList).selected)
        if not methods:
            raise InputError("choose at least one method")
        kinds = list(self.query_one("#dash-kinds", SelectionList).selected)
        if not kinds:
            raise InputError("choose at least one query kind")
        suite = self.query_one("#dash-suite", Select).value
        if suite is Select.BLANK or not suite:
            raise InputError("no suite chosen")
        repeats = self._parse_repeats(self.query_one("#dash-repeats", Input).value)
        mnt = self._parse_mnt(self.query_one("#dash-mnt", Input).value)
        out = self.query_one("#dash-out", Input).value.strip()
        if not out:
            raise InputError("runs file is empty")
        if Path(out).is_dir():
            raise InputError(f"runs file {out} is a directory")
        return {"cfg": {"methods": methods, "suite": str(suite), "repeats": repeats,
                        "max_new_tokens": mnt, "kinds": kinds}, "out": out}

    def action_run(self) -> None:
        if self.busy:
            self.say("[yellow]a job is running — Esc stops it[/]")
            return
        app: Any = self.app
        if app.lm is None:
            self.say("[yellow]the model is not loaded yet (see the status above)[/]")
            return
        try:
            f = self.form()
        except InputError as e:
            self.say(f"[red]{e}[/]")
            return
        self.purpose = "run"
        self.runs_path = f["out"]
        self._grid_total = None
        self.say(f"running {', '.join(f['cfg']['methods'])} on {f['cfg']['suite']} "
                 f"({', '.join(f['cfg']['kinds'])}) × {f['cfg']['repeats']} → {f['out']}")
        self.start_job(JOB_KIND, bench_job, app.lm, f["cfg"], f["out"], params=f["cfg"],
                       timeout=0)

    def action_load(self) -> None:
        path = self.query_one("#dash-out", Input).value.strip()
        self.runs_path = path
        if self.refresh_report(force=True):
            self.say(f"loaded {path}")

    def action_export(self) -> None:
        if self.busy:
            self.say("[yellow]a job is running — wait or Esc[/]")
            return
        path = self.query_one("#dash-out", Input).value.strip()
        if not Path(path).is_file():
            self.say(f"[red]no runs file at {path}[/]")
            return
        folder = str(Path(self.app.settings.export_dir))  # type: ignore[attr-defined]
        self.purpose = "export"
        self.start_job(JOB_KIND, export_job, path, folder, params={"runs": path}, needs_model=False)

    # ---- live aggregation -------------------------------------------------------------------
    def refresh_report(self, force: bool = False) -> bool:
        """Re-read the runs JSONL and redraw table and plots (≤ 1 Hz unless forced)."""
        now = time.monotonic()
        if not force and now - self._last_read < 1.0:
            return False
        self._last_read = now
        path = getattr(self, "runs_path", None) or self.query_one("#dash-out", Input).value.strip()
        from engine.bench_report import load_report

        try:
            rep = load_report(path)
        except InputError as e:
            if force:
                self.say(f"[red]{e}[/]")
            return False
        self.show_report(rep)
        return True

    def show_report(self, rep: Any) -> None:
        from engine.bench_report import table_rows

        self.report = rep
        t = self.query_one("#dash-table", DataTable)
        t.clear()
        for cells in table_rows(rep, labels=False):
            t.add_row(*[c.replace("\n", " ") for c in cells], height=None)
        for pid in ("#plot-cost", "#plot-medians", "#plot-speed"):
            self.query_one(pid).show(rep)  # type: ignore[attr-defined]
        legend = " · ".join(f"{r.key}: {r.label}" + (f" ({r.speed_note})" if r.speed_note else "")
                            for r in rep.rows)
        extra = "".join(f"\n[yellow]{p}[/]" for p in (rep.problems + rep.notes)[:3])
        self.query_one("#dash-footer", Static).update(f"[dim]{legend}\n{rep.footer()}[/]{extra}")

    # ---- job messages -----------------------------------------------------------------------
    def job_started(self, m: JobStarted) -> None:
        if self.purpose == "run":
            self.query_one("#dash-grid", Static).update("starting: warm-up and baseline references…")

    def on_job_progressed(self, m: JobProgressed) -> None:
        super().on_job_progressed(m)
        if not self._mine(m) or self.purpose != "run":
            return
        p = m.progress
        if p.total:
            self._grid_total = p.total
            md = p.metrics
            where = (f" · now {md.get('method')} · {md.get('prompt')} · repeat {int(md.get('repeat', 0)) + 1}"
                     if "method" in md else "")
            self.query_one("#dash-grid", Static).update(
                f"grid (method × query × repeat): {p.step}/{p.total}{where}")
        self.refresh_report()

    async def job_finished(self, m: JobFinished) -> None:
        if self.purpose == "export":
            self.say("exported:\n" + "\n".join(m.result))
        else:
            s = m.result
            self.say(f"[green]{s.written} records[/], {s.skipped} resumed, {s.errors} errors → {s.out}"
                     + (" [yellow](stopped)[/]" if s.cancelled else ""))
            self.refresh_report(force=True)
        self.purpose = None

    async def job_cancelled(self, m: JobCancelled) -> None:
        self.say("[yellow]stopped — finished records are kept; Run again to resume[/]")
        if self.purpose == "run":
            self.refresh_report(force=True)
        self.purpose = None

    async def job_failed(self, m: JobFailed) -> None:
        self.say(f"[red]{m.message}[/]")
        self.purpose = None
