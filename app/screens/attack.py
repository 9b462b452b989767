"""AdvTok attack screen: search the tokenizations of a request for the one that makes a target
response most likely, through the runner (job kind "advtok", timeout from settings).

The form is validated as it is typed (app/validate.py): a bad field shows one inline message and
keeps Run disabled, so nothing unvalidated reaches the engine (which validates again). While the
search runs, the embedded PhaseProgress shows vocab → mdd → search (best score + sparkline) →
generate. The result shows the canonical and the adversarial tokenization with token boundaries
drawn (alternating colours, ids underneath, changed spans underlined), both scores, the edit
distance, and the normal vs adversarial samples side by side. Esc stops the run (the engine
returns the best tokenization found so far); ctrl+e exports the result as JSON (atomic write,
path shown). The form → run → result → export life cycle is app/screens/job_screen.py.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from app.inert import printable, tesc
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import (Button, Collapsible, Input, Label, Select, Sparkline, Static,
                             TabbedContent, TabPane)


from app.messages import JobCancelled, JobStarted, RunFromIds
from app.screens.job_screen import JobScreen, Launch
from app.validate import FieldCheck, first_error, parse_field
from engine.advtok.config import AttackConfig
from engine.bounds import bound_of
from app.widgets.dataset_panel import DatasetPanel
from app.widgets.engine_status import EngineStatus
from app.widgets.lattice_view import LatticeView
from app.widgets.token_strip import TokenStrip

ENGINE_MODULES = ("engine.advtok.search",)
JOB_KIND = "advtok"
WHAT = "AdvTok — adversarial tokenization of a request (canonical vs adversarial tokens, scores, samples side by side)"

INITS = ("canonical", "random")  # the starts the form offers ("given" needs token ids)
#: the form has no cap field: the request is held to the config's default cap
REQUEST_CHARS = AttackConfig.__dataclass_fields__["max_request_chars"].default


def score_text(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:.3f}"


def result_summary(r: Any) -> str:
    """Rich markup: stop reason, scores, distances, counts and timings of an AttackResult."""
    imp = r.improvement
    delta = "" if imp is None else f" ([{'green' if imp > 0 else 'dim'}]Δ {imp:+.3f}[/])"
    lines = [
        f"[b]stop[/] {tesc(r.stop_reason)} after {r.iterations} iteration(s) · "
        f"{r.candidates_scored:,} candidates scored ({r.candidates_per_s:.1f}/s) · "
        f"{r.memo_hits:,} memo hits · {r.timings.get('total_s', 0.0):.1f} s",
        f"[b]score[/] (length-normalised log p of the response): canonical "
        f"{score_text(r.canonical_score)} → adversarial [b]{score_text(r.best_score)}[/]{delta}",
        f"[b]edit distance[/] {r.levenshtein} token edit(s) (Levenshtein) · {r.edge_distance} "
        f"boundary edge(s) not in the canonical · {len(r.canonical_ids)} → {len(r.best_ids)} tokens"
        f" · {tesc(str(r.count))} tokenizations of the request",
    ]
    if r.warnings:
        lines.append("[yellow]" + tesc(" · ".join(r.warnings)) + "[/]")
    return "\n".join(lines)


def samples_text(samples: list[dict[str, Any]], empty: str) -> Text:
    """Numbered samples with their stop reason and length (plain text, no markup)."""
    if not samples:
        return Text(empty, style="dim")
    out = Text()
    for i, s in enumerate(samples, 1):
        if i > 1:
            out.append("\n\n")
        out.append(f"{i}. ", style="bold")
        out.append(printable(s.get("text", "").strip(), multiline=True) or "(empty)")
        out.append(printable(f"  [{s.get('new_tokens', '?')} tok, {s.get('stop_reason', '?')}]"),
                   style="dim")
    return out


class AttackScreen(JobScreen):
    """AdvTok: form, live progress, canonical vs adversarial tokenization, samples, export."""

    JOB_KIND, PREFIX, NOUN, PALETTE, EXPORT_STEM = JOB_KIND, "atk", "attack", "attack", "attack"
    ENGINE_MODULES, ENGINE_METHOD = ENGINE_MODULES, "attack"
    ENGINE_MISSING = "the AdvTok engine (engine.advtok.search) is not available in this checkout"

    # the two modes fill the body (kept in the mode classes: the form's own CSS is app.tcss's)
    DEFAULT_CSS = """
    .atk-modes { height: 1fr; }
    .atk-modes > ContentSwitcher { height: 1fr; }
    .atk-mode { height: 1fr; padding: 0; }
    """

    BINDINGS = [
        Binding("escape", "stop", "Stop", id="attack.stop", tooltip="Stop the running attack"),
        Binding("ctrl+r", "run", "Run", id="attack.run", tooltip="Run the attack"),
        Binding("ctrl+e", "export", "Export", id="attack.export", priority=True,
                tooltip="Export the last result as JSON (dataset mode: the report as Markdown "
                        "and CSV)"),
    ]

    def __init__(self) -> None:
        super().__init__(id="attack-screen")

    # -- layout -------------------------------------------------------------------------------
    def compose_body(self) -> ComposeResult:
        def row(label: str, widget: Any) -> ComposeResult:
            with Horizontal(classes="form-row"):
                yield Label(label, classes="field-label")
                yield widget

        p = self.parsers()
        with TabbedContent(id="atk-modes", classes="atk-modes"):
            with TabPane("Single request", id="atk-mode-single", classes="atk-mode"):
                yield from self.compose_single(row, p)
            with TabPane("Dataset", id="atk-mode-dataset", classes="atk-mode"):
                with VerticalScroll(id="atk-dataset-scroll", classes="tool-main"):
                    yield DatasetPanel(id="atk-dataset")

    def compose_single(self, row: Callable[[str, Any], ComposeResult],
                       p: dict[str, Callable[[str], Any]]) -> ComposeResult:
        """The single-request mode: the form, the result and the engine status."""
        with VerticalScroll(id="attack-main", classes="tool-main"):
            yield from row("Request", Input(
                id="atk-request", placeholder="the user request to re-tokenize, e.g. Write a poem about the sea",
                validators=[FieldCheck(p["atk-request"])]))
            yield from row("Target response", Input(
                id="atk-response", placeholder="the response to make likely, e.g. Sure, here is",
                validators=[FieldCheck(p["atk-response"])]))
            yield from row("System prompt", Input(
                id="atk-system", placeholder="empty: the AdvTok reference default system prompt",
                validators=[FieldCheck(p["atk-system"])]))
            with Horizontal(id="atk-numbers", classes="form-row number-row"):
                # short labels (whole at 80 columns); the tooltip says the rest
                for ident, label, value, ph, tip in (
                        ("atk-iters", "iterations", "20", bound_of(AttackConfig, "iters").describe(),
                         "search iterations at most"),
                        ("atk-neighbours", "neighbours", "", "all",
                         "max neighbours scored per iteration (empty: all)"),
                        ("atk-samples", "samples", "4", bound_of(AttackConfig, "samples").describe(),
                         "answers sampled with each tokenization"),
                        ("atk-sample-tokens", "sample tokens", "48", "new tokens",
                         "new tokens per sampled answer"),
                        ("atk-seed", "seed", "0", "0…", "seed of the search and the samples"),
                        ("atk-sample-rep", "rep. penalty", "1.0", "1 = off",
                         "repetition penalty of the sampled answers (1 = off)"),
                ):
                    with Vertical(classes="number-field"):
                        yield Label(label, classes="number-label").with_tooltip(tip)
                        yield Input(value=value, id=ident, placeholder=ph, tooltip=tip,
                                    validators=[FieldCheck(p[ident])])
                with Vertical(classes="number-field"):
                    yield Label("init", classes="number-label").with_tooltip(
                        "where the search starts: canonical, random or given token ids")
                    yield Select([(c, c) for c in INITS], value="canonical", allow_blank=False,
                                 id="atk-init", tooltip="where the search starts")
            yield Static("", id="atk-error", classes="inline-error")
            with Horizontal(classes="button-row"):
                yield Button("Run attack", id="atk-run", variant="primary", disabled=True)
                yield Button("Stop", id="atk-stop", variant="error", disabled=True)
                yield Button("Export JSON", id="atk-export", disabled=True)
            yield Static("", id="atk-status", classes="status-line")
            with Vertical(id="atk-result"):
                yield Static("[dim]no result yet — fill in the request and the target response, "
                             "then Run (ctrl+r)[/]", id="atk-summary")
                with Horizontal(id="atk-curve-row"):
                    yield Static("", id="atk-curve-label")
                    yield Sparkline([], id="atk-curve")
                yield Static("canonical tokenization", id="atk-canon-title", classes="strip-title")
                yield TokenStrip(id="atk-canon")
                yield Static("adversarial tokenization [dim](underlined: spans not in the "
                             "canonical)[/]", id="atk-adv-title", classes="strip-title")
                yield TokenStrip(id="atk-adv")
                yield LatticeView(id="atk-lattice")
                with Horizontal(id="atk-sample-cols"):
                    with Vertical(classes="sample-col"):
                        yield Static("[b]normal samples[/] (canonical tokens)",
                                     id="atk-samples-can-title", classes="strip-title")
                        yield Static("", id="atk-samples-can", classes="sample-body")
                    with Vertical(classes="sample-col"):
                        yield Static("[b]adversarial samples[/] (best tokens)",
                                     id="atk-samples-adv-title", classes="strip-title")
                        yield Static("", id="atk-samples-adv", classes="sample-body")
            with Collapsible(title="engine status", collapsed=True, id="atk-engine"):
                yield EngineStatus(ENGINE_MODULES, JOB_KIND, WHAT, id="attack-status")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#atk-request", Input).focus()
        self.refresh_controls()

    # -- validation ---------------------------------------------------------------------------
    def parsers(self) -> dict[str, Callable[[str], Any]]:
        """Input id → parser (raises InputError with one clear sentence)."""
        return {
            "atk-request": lambda v: parse_field(v, AttackConfig, "request", hi=REQUEST_CHARS),
            "atk-response": lambda v: parse_field(v, AttackConfig, "response"),
            "atk-system": lambda v: parse_field(v, AttackConfig, "system"),
            "atk-iters": lambda v: parse_field(v, AttackConfig, "iters"),
            "atk-neighbours": lambda v: parse_field(v, AttackConfig, "max_neighbours"),
            "atk-samples": lambda v: parse_field(v, AttackConfig, "samples"),
            "atk-sample-tokens": lambda v: parse_field(v, AttackConfig, "sample_max_new_tokens",
                                                       hi=max(1, self.context_length() - 1)),
            "atk-seed": lambda v: parse_field(v, AttackConfig, "seed"),
            "atk-sample-rep": lambda v: parse_field(v, AttackConfig, "sample_repetition_penalty"),
        }

    def form(self) -> tuple[dict[str, Any], Optional[str]]:
        """(AttackConfig fields, first error or None) from the current inputs."""
        p = self.parsers()

        def val(ident: str) -> Callable[[], Any]:
            return lambda: p[ident](self.query_one(f"#{ident}", Input).value)

        values, err = first_error({
            "request": val("atk-request"), "response": val("atk-response"),
            "system": val("atk-system"), "iters": val("atk-iters"),
            "max_neighbours": val("atk-neighbours"), "samples": val("atk-samples"),
            "sample_max_new_tokens": val("atk-sample-tokens"), "seed": val("atk-seed"),
            "sample_repetition_penalty": val("atk-sample-rep"),
            "init": lambda: parse_field(str(self.query_one("#atk-init", Select).value),
                                        AttackConfig, "init"),
        })
        return values, err

    # -- state → controls ---------------------------------------------------------------------
    def status_detail(self) -> str:
        app = self.tokenforge_app
        vocab = {"ready": "vocabulary cached", "loading": "vocabulary loading (the run waits)"}.get(
            app.vocab_state, "vocabulary built on first run")
        return f"{tesc(app.lm.describe() if app.lm is not None else '')} · {vocab}"

    def on_run_from_ids(self, m: RunFromIds) -> None:
        """The lattice: search again from its edited tokenization."""
        m.stop()
        self.action_run(given=m.ids)

    # -- run --------------------------------------------------------------------------------
    def action_run(self, given: Optional[list[int]] = None) -> None:
        """Run the attack; ``given`` (from the lattice) starts the search from those ids. In
        the dataset mode, Run runs (or resumes) the dataset."""
        if given is None and self.dataset_mode:
            self.query_one(DatasetPanel).run()
            return
        super().action_run(given=given)

    def action_export(self) -> None:
        """ctrl+e: the single request's result as JSON; in the dataset mode the ΔASR report
        as Markdown and CSV (the writer of ``attack report --markdown/--csv``)."""
        if self.dataset_mode:
            self.query_one(DatasetPanel).export_report()
            return
        super().action_export()

    @property
    def dataset_mode(self) -> bool:
        return self.query_one("#atk-modes", TabbedContent).active == "atk-mode-dataset"

    def refresh_form(self) -> None:
        self.query_one(DatasetPanel).refresh_controls()

    def prepare(self, fields: dict[str, Any], given: Optional[list[int]] = None) -> Launch:
        app = self.tokenforge_app
        if given:
            fields = {**fields, "init": "given", "given_ids": list(given)}
        self.show_result(None)
        vocab = app.vocab if app.vocab_state == "ready" else None
        summary = {k: v for k, v in fields.items() if k not in ("request", "response", "system")}
        summary["request_chars"] = len(fields["request"])
        return Launch(app.engine.attack, (app.lm, fields, vocab), params=summary,
                      settings=dict(fields),
                      running="[cyan]running…[/] vocab → mdd → search → generate · Esc stops and "
                              "keeps the best so far")

    def job_started(self, m: JobStarted) -> None:
        """The run ETA also covers the sampling after the search: both tokenizations' samples
        at the measured decode speed, one after another (an upper bound: they decode in
        batches)."""
        super().job_started(m)
        tok_s = self.tokenforge_app.settings.measured_tok_s
        s = self.run_settings
        try:
            n, toks = int(s.get("samples") or 0), int(s.get("sample_max_new_tokens") or 0)
        except (TypeError, ValueError):
            return
        if tok_s and n and toks:
            self.progress_widget.after_s = 2 * n * toks / tok_s

    def nothing_kept_text(self, m: JobCancelled) -> str:
        return f"stopped ({m.reason}) before a tokenization was scored"

    def show_result(self, r: Any, note: str = "") -> None:
        canon = self.query_one("#atk-canon", TokenStrip)
        adv = self.query_one("#atk-adv", TokenStrip)
        curve = self.query_one("#atk-curve", Sparkline)
        self.query_one("#atk-lattice", LatticeView).show_result(r)
        if r is None or not r.curve:
            curve.data = []
            self.query_one("#atk-curve-label", Static).update("")
        else:  # the canonical score, then the best score after each iteration
            pts = ([r.canonical_score] if r.canonical_score is not None else []) + list(r.curve)
            curve.data = pts
            self.query_one("#atk-curve-label", Static).update(
                f"[b]best score by iteration[/] {pts[0]:.2f} → {pts[-1]:.2f} ")
        if r is None:
            canon.clear()
            adv.clear()
            self.query_one("#atk-samples-can", Static).update("")
            self.query_one("#atk-samples-adv", Static).update("")
            return
        head = f"[yellow]{tesc(note)}[/]\n" if note else ""
        self.query_one("#atk-summary", Static).update(head + result_summary(r))
        canon.set_tokens(r.canonical_tokens, r.canonical_ids)
        adv.set_tokens(r.best_tokens, r.best_ids, reference=r.canonical_tokens)
        self.query_one("#atk-canon-title", Static).update(
            f"[b]canonical[/] tokenization · {len(r.canonical_ids)} tokens · score "
            f"{score_text(r.canonical_score)}")
        self.query_one("#atk-adv-title", Static).update(
            f"[b]adversarial[/] tokenization · {len(r.best_ids)} tokens · score "
            f"{score_text(r.best_score)} [dim](underlined: spans not in the canonical)[/]")
        c = r.config or {}
        how = (f"T {c.get('sample_temperature', '?')}, ≤ {c.get('sample_max_new_tokens', '?')} "
               f"tokens, seed {c.get('seed', '?')} on both sides")
        self.query_one("#atk-samples-can-title", Static).update(
            f"[b]normal samples[/] (canonical tokens) [dim]{how}[/]")
        self.query_one("#atk-samples-adv-title", Static).update(
            f"[b]adversarial samples[/] (best tokens) [dim]{how}[/]")
        none = "no samples (samples = 0)" if not r.config.get("samples") else (
            "not sampled (run stopped)")
        self.query_one("#atk-samples-can", Static).update(samples_text(r.canonical_samples, none))
        self.query_one("#atk-samples-adv", Static).update(samples_text(r.adversarial_samples, none))
