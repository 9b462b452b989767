"""The attack screen's dataset mode: a benchmark file run row by row (AdvTok search, samples on
both sides, verdicts of each judge, one JSON line per finished row), or the judging of an
existing results file, then the ΔASR report.

It is the TUI face of ``attack --dataset`` and ``attack judge``: the work is the engine's
(app/engines.py ``dataset_run`` / ``judge_results``, which call engine.advtok.evalrun), the
progress state is engine.advtok.runprogress's (row i/N, the phase inside the row, rows/h, ETA),
and the report tables are engine.advtok.asr_render's. Resume is the engine's too: a re-Run on
the same results file skips its finished rows and refuses other settings with one message,
shown inline here. Esc (the screen's stop) ends the run after the row in progress; every
finished row is already a whole line on disk. Text from files reaches the screen only through
app/inert.py.
"""
from __future__ import annotations

from typing import Any, Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Input, Label, Static

from app.app_access import AppAccess
from app.inert import tesc, text
from app.messages import (ControlsChanged, JobCancelled, JobFailed, JobFinished, JobProgressed,
                          JobStarted, WidgetJobEnded, WidgetJobStarted)
from app.validate import FieldCheck, first_error, parse_field
from app.widgets.dataset_report import DatasetReport
from app.widgets.dataset_rows import DatasetRows
from engine.advtok.config import AttackConfig, DatasetRunConfig
from engine.advtok.runprogress import RunProgress

#: the job kind (its own timeout entry: a dataset run takes hours, so none by default)
JOB_KIND = "advtok-dataset"


def parse_judges_field(v: str) -> str:
    """The ``--judge`` names (refusal, target, KIND:MODEL), checked; InputError otherwise."""
    from engine.advtok.judges import parse_judges
    from engine.errors import InputError

    if not v.strip():
        raise InputError("judges: name at least one, e.g. refusal,target")
    parse_judges(v)
    return v.strip()


def parse_path(v: str, what: str) -> str:
    from engine.errors import InputError

    if not v.strip():
        raise InputError(f"{what}: give a file path")
    return v.strip()


def running_delta(records: list[dict[str, Any]], judges: list[str]) -> str:
    """Per judge, the running ΔASR point estimate over the rows finished in this run and its n
    rows — the report's own estimate (engine.advtok.asr_report.live_delta: pooled harmful /
    parsed samples, adversarial − canonical, over rows parsed on both sides). The intervals
    come with the full report at the end. A judge whose verdicts are mostly unparsed says so
    (``4/4 UNPARSED``), as the CLI's row line does: its ΔASR must not read as a measurement."""
    from engine.advtok.asr_report import live_delta
    from engine.advtok.judges.summary import mostly_unparsed

    parts = []
    for j in judges:
        value, n = live_delta(records, j)
        loud = mostly_unparsed(records, j)
        parts.append(f"{j} ΔASR " + (f"{100 * value:+.1f} pp" if value is not None else "—")
                     + f" (n={n})" + (f" {loud}" if loud else ""))
    return " · ".join(parts)


class DatasetPanel(AppAccess, Vertical):
    """Form (benchmark, results, judges, iterations, samples) → run or judge → live progress →
    the ΔASR report tables."""

    DEFAULT_CSS = """
    DatasetPanel { height: auto; }
    DatasetPanel .ds-row { height: auto; }
    DatasetPanel .ds-label { width: 16; padding: 1 1 0 0; }
    DatasetPanel .ds-input { width: 1fr; }
    DatasetPanel .ds-num { width: 1fr; height: auto; }
    DatasetPanel .ds-buttons { height: auto; }
    DatasetPanel .ds-buttons Button { margin-right: 1; }
    DatasetPanel .ds-text { height: auto; }
    DatasetPanel .ds-error { color: $error; height: auto; }
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._job: Any = None
        self._mode = ""                       # "run" / "judge" while a job runs
        self.rp: Optional[RunProgress] = None
        self.records: list[dict[str, Any]] = []       # rows finished in the running job
        self.judge_ids: list[str] = []
        self.outcome: Any = None
        self.error = ""

    # -- layout -------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        def row(label: str, widget: Any) -> ComposeResult:
            with Horizontal(classes="ds-row"):
                yield Label(label, classes="ds-label")
                yield widget

        p = self.parsers()
        yield from row("Benchmark file", Input(
            id="ds-bench", classes="ds-input", validators=[FieldCheck(p["ds-bench"])],
            placeholder="JSONL or AdvBench/HarmBench/JailbreakBench CSV (Enter reads it)"))
        yield Static("", id="ds-file", classes="ds-text")
        yield from row("Results file", Input(
            id="ds-out", classes="ds-input", validators=[FieldCheck(p["ds-out"])],
            placeholder="results.jsonl: finished rows are appended; a re-Run resumes"))
        yield from row("Judges", Input(
            "refusal", id="ds-judges", classes="ds-input", validators=[FieldCheck(p["ds-judges"])],
            placeholder="refusal, target, or KIND:MODEL (comma-separated, as --judge)"))
        for fields in (
                (("ds-iters", "iterations", "20", "", "search iterations at most"),
                 ("ds-neighbours", "neighbours", "", "all",
                  "max neighbours scored per iteration (empty: all)"),
                 ("ds-samples", "samples", "4", "", "answers sampled per side"),
                 ("ds-tokens", "sample tokens", "48", "", "new tokens per sampled answer"),
                 ("ds-seed", "seed", "0", "", "seed of the search and the samples")),
                (("ds-rubric-tokens", "rubric tokens", "", "384",
                  "tokens the rubric grader may write (as --rubric-max-tokens)"),
                 ("ds-policies", "ShieldGemma policies", "", "all four",
                  "dangerous, harassment, hate, sexual (as --shieldgemma-policies)"))):
            with Horizontal(classes="ds-row"):
                for ident, label, value, ph, tip in fields:
                    with Vertical(classes="ds-num"):
                        yield Label(label).with_tooltip(tip)
                        yield Input(value, id=ident, tooltip=tip, placeholder=ph,
                                    validators=[FieldCheck(p[ident])])
        yield Static("", id="ds-error", classes="ds-error")
        with Horizontal(classes="ds-buttons"):
            yield Button("Run dataset", id="ds-run", variant="primary", disabled=True)
            yield Button("Judge results file", id="ds-judge", disabled=True,
                         tooltip="Add the judges' verdicts to the results file (attack judge)")
        yield Static("[dim]no dataset run yet: a benchmark file, a results file, Run "
                     "(ctrl+r); Esc stops after the row in progress[/]", id="ds-progress",
                     classes="ds-text")
        yield DatasetReport(id="ds-report-box")
        yield DatasetRows(id="ds-drill")

    def on_mount(self) -> None:
        self.refresh_controls()

    # -- form ---------------------------------------------------------------------------------
    def parsers(self) -> dict[str, Any]:
        return {
            "ds-bench": lambda v: parse_path(v, "benchmark file"),
            "ds-out": lambda v: parse_path(v, "results file"),
            "ds-judges": parse_judges_field,
            "ds-iters": lambda v: parse_field(v, AttackConfig, "iters"),
            "ds-samples": lambda v: parse_field(v, AttackConfig, "samples"),
            "ds-tokens": lambda v: parse_field(v, AttackConfig, "sample_max_new_tokens"),
            "ds-neighbours": lambda v: parse_field(v, AttackConfig, "max_neighbours"),
            "ds-seed": lambda v: parse_field(v, AttackConfig, "seed"),
            # the judges' own settings (as --rubric-max-tokens, --shieldgemma-policies)
            "ds-rubric-tokens": lambda v: None if not v.strip() else parse_field(
                v, DatasetRunConfig, "rubric_max_tokens"),
            "ds-policies": lambda v: parse_field(v, DatasetRunConfig, "shield_policies"),
        }

    def judge_settings(self, fields: dict[str, Any]) -> DatasetRunConfig:
        """The judge settings of the form (DatasetRunConfig, its defaults where empty)."""
        cfg = DatasetRunConfig(shield_policies=tuple(fields["policies"]))
        if fields["rubric_tokens"] is not None:
            cfg.rubric_max_tokens = fields["rubric_tokens"]
        return cfg.validate()

    def _val(self, ident: str) -> Any:
        p = self.parsers()[ident]
        return lambda: p(self.query_one(f"#{ident}", Input).value)

    def run_form(self) -> tuple[dict[str, Any], Optional[str]]:
        return first_error({k.replace("-", "_"): self._val(f"ds-{k}") for k in (
            "bench", "out", "judges", "iters", "neighbours", "samples", "tokens", "seed",
            "rubric-tokens", "policies")})

    def judge_form(self) -> tuple[dict[str, Any], Optional[str]]:
        return first_error({k.replace("-", "_"): self._val(f"ds-{k}")
                            for k in ("out", "judges", "rubric-tokens", "policies")})

    @property
    def busy(self) -> bool:
        return self._job is not None and not self._job.done

    def blocked(self) -> Optional[str]:
        app = self.tokenforge_app
        if not hasattr(app.engine, "dataset_run"):
            return "dataset runs are not available in this engine"
        if app.lm is None:
            return "no model loaded: open Settings (F6)"
        return None

    def refresh_controls(self) -> None:
        if not self.children:
            return
        _, err = self.run_form()
        _, jerr = self.judge_form()
        other = getattr(self.screen, "busy", False)
        blocked = self.blocked()
        self.query_one("#ds-run", Button).disabled = bool(err or blocked or other)
        self.query_one("#ds-judge", Button).disabled = bool(jerr or blocked or other)
        self.query_one("#ds-error", Static).update(tesc(self.error or err or blocked or ""))

    def on_input_changed(self, event: Any) -> None:
        event.stop()
        self.error = ""
        self.refresh_controls()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.input.id == "ds-bench":
            self.read_file()
        else:
            self.run()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "ds-run":
            event.stop()
            self.run()
        elif event.button.id == "ds-judge":
            event.stop()
            self.judge()

    # -- the benchmark file -------------------------------------------------------------------
    def read_file(self) -> Any:
        """Read the benchmark file (on Enter and before a run); show its layout, row count and
        bad rows with line numbers. Returns the BenchmarkFile, None when unreadable."""
        from engine.errors import EngineError

        out = self.query_one("#ds-file", Static)
        path = self.query_one("#ds-bench", Input).value.strip()
        if not path:
            out.update("")
            return None
        try:
            bench = self.tokenforge_app.engine.read_benchmark(path)
        except (EngineError, OSError) as e:
            out.update(Text.assemble(("cannot read: ", "red"), text(str(e))))
            return None
        t = Text.assemble(("layout ", "bold"), text(bench.layout),
                          f" · {len(bench.rows)} usable row(s) · {len(bench.problems)} bad row(s)")
        for msg in bench.problems[:20]:
            t.append("\n  ")
            t.append_text(text(msg, "yellow"))
        if len(bench.problems) > 20:
            t.append(f"\n  … and {len(bench.problems) - 20} more", style="yellow")
        out.update(t)
        return bench

    # -- jobs ---------------------------------------------------------------------------------
    def _can_start(self, err: Optional[str]) -> bool:
        if self.busy or getattr(self.screen, "busy", False):
            self.notify("A job is running: Esc to stop it first", severity="warning")
            return False
        why = err or self.blocked()
        if why:
            self.query_one("#ds-error", Static).update(tesc(why))
            return False
        return True

    def run(self) -> None:
        """Run (or resume) the dataset: every pending row of the benchmark into the results."""
        fields, err = self.run_form()
        if not self._can_start(err):
            return
        bench = self.read_file()
        if bench is None:
            return
        if not bench.rows:
            self.query_one("#ds-error", Static).update(
                tesc(f"{fields['bench']}: no usable row ({len(bench.problems)} bad row(s))"))
            return
        from engine.advtok.judges import parse_judges

        app = self.tokenforge_app
        self.judge_ids = [k if not m else f"{k}:{m}" for k, m in parse_judges(fields["judges"])]
        self.records = []
        self.rp = RunProgress(rows=len(bench.rows))
        eng, lm = app.engine, app.lm
        settings = {"iters": fields["iters"], "max_neighbours": fields["neighbours"],
                    "samples": fields["samples"], "sample_max_new_tokens": fields["tokens"],
                    "seed": fields["seed"]}
        jset = self.judge_settings(fields)

        def work(*, progress: Any, cancel: Any) -> Any:
            return eng.dataset_run(lm, fields["bench"], fields["out"], settings, fields["judges"],
                                   on_row=self._row_done, progress=self._feed(progress),
                                   cancel=cancel, judge_settings=jset)

        self._start("run", work, {"dataset": fields["bench"], "out": fields["out"], **settings})

    def judge(self) -> None:
        """``attack judge``: the judges' verdicts added to the results file, in place."""
        fields, err = self.judge_form()
        if not self._can_start(err):
            return
        eng = self.tokenforge_app.engine
        self.rp = RunProgress(rows=0)
        self.records, self.judge_ids = [], []

        jset = self.judge_settings(fields)

        def work(*, progress: Any, cancel: Any) -> Any:
            return eng.judge_results(fields["out"], fields["judges"], progress=self._feed(progress),
                                     cancel=cancel, judge_settings=jset)

        self._start("judge", work, {"judge": fields["out"], "judges": fields["judges"]})

    def _feed(self, progress: Any) -> Any:
        """The engine's progress callback (worker thread): the run state first, then the pump."""
        rp = self.rp

        def feed(p: Any) -> None:
            if rp is not None:
                if p.phase == "row" and p.total:
                    rp.rows = p.total
                rp.update(p)
            progress(p)

        return feed

    def _row_done(self, i: int, n: int, rec: dict[str, Any]) -> None:
        """Worker thread: a finished row's record (for the running ΔASR)."""
        self.records.append(rec)

    def _start(self, mode: str, work: Any, params: dict[str, Any]) -> None:
        self.error, self.outcome, self._mode = "", None, mode
        self.show_report(None)
        self.query_one(DatasetRows).show([])
        self._job = self.tokenforge_app.runner.start(JOB_KIND, work, target=self, params=params,
                                                     timeout=0)
        self.post_message(WidgetJobStarted(self._job, progress=True))
        self.query_one("#ds-progress", Static).update(
            "[cyan]starting…[/] (vocabulary, judges) · Esc stops after the row in progress")
        self._ticker = self.set_interval(1.0, self.tick)
        self.refresh_controls()

    def _mine(self, m: Any) -> bool:
        return self._job is not None and m.job_id == self._job.id

    def tick(self) -> None:
        """Once a second while running: the elapsed time and the ETA move between events."""
        if self.busy:
            self.show_progress()

    def show_progress(self) -> None:
        if self.rp is None:
            return
        line = Text(self.rp.line(), style="cyan")
        if self.judge_ids:
            line.append("\n")
            line.append_text(text(running_delta(list(self.records), self.judge_ids)))
        self.query_one("#ds-progress", Static).update(line)

    def on_job_started(self, m: JobStarted) -> None:
        if self._mine(m):
            m.stop()

    def on_job_progressed(self, m: JobProgressed) -> None:
        if self._mine(m):   # not stopped: the screen's progress bar follows it too
            self.show_progress()

    async def on_job_finished(self, m: JobFinished) -> None:
        if not self._mine(m):
            return
        m.stop()
        self.outcome = m.result
        o = m.result
        if o.summary is not None:
            s = o.summary
            rate = self.rp.rate_text() if self.rp else ""
            head = (f"[green]done[/] · {s.done:d} row(s) run, {s.skipped:d} already finished, "
                    f"{len(s.failed)} failed · {tesc(rate)} → {tesc(s.out)}")
            msgs = list(s.failed) + list(s.notes)
        else:
            head = (f"[green]judged[/] {o.judged.rows:d} row(s) → {tesc(str(o.judged.dest))}")
            msgs = list(o.judged.notes)
        body = Text.from_markup(head)
        if self.rp is not None:
            body.append("\n" + self.rp.line(), style="dim")
        for msg in msgs[:10]:
            body.append("\n")
            body.append_text(text(msg, "yellow"))
        self.query_one("#ds-progress", Static).update(body)
        self.show_report(o.report)
        self.query_one(DatasetRows).show(o.records)
        self._end(m.job_id, "finished", f"done in {m.elapsed:.1f} s")

    async def on_job_cancelled(self, m: JobCancelled) -> None:
        if not self._mine(m):
            return
        m.stop()
        s = getattr(m.partial, "summary", None)
        done = f"{s.done:d} row(s) written this run, " if s is not None else ""
        self.query_one("#ds-progress", Static).update(
            f"[yellow]stopped ({tesc(m.reason)})[/] · {tesc(done)}every finished row is on disk · "
            f"Run again to resume" if self._mode == "run" else
            f"[yellow]stopped ({tesc(m.reason)})[/] · the results file is as it was")
        self._end(m.job_id, "cancelled", f"cancelled ({m.reason})")

    async def on_job_failed(self, m: JobFailed) -> None:
        if not self._mine(m):
            return
        m.stop()            # shown inline (a settings mismatch on resume, a lock held, …)
        self.error = m.message + (f" — {m.hint}" if m.hint else "")
        self.query_one("#ds-progress", Static).update(Text.assemble(("failed: ", "red"),
                                                                    text(m.message)))
        self._end(m.job_id, "failed", m.message)

    def _end(self, job_id: int, state: str, note: str) -> None:
        ticker = getattr(self, "_ticker", None)
        if ticker is not None:
            ticker.stop()
        self.post_message(WidgetJobEnded(job_id, state, note))
        self.post_message(ControlsChanged())
        self.refresh_controls()

    # -- the report ---------------------------------------------------------------------------
    def show_report(self, rep: Any) -> None:
        self.query_one(DatasetReport).show(rep)

    def export_report(self) -> None:
        """ctrl+e in the dataset mode: the report as Markdown and CSV (DatasetReport.export)."""
        if self.busy:
            self.notify("Wait for the run to finish (or Esc) before exporting", severity="warning")
            return
        self.query_one(DatasetReport).export()

    def report_cells(self) -> list[list[str]]:
        """The headline table's header and rows as plain strings (tests, copy)."""
        return self.query_one(DatasetReport).cells()
