"""The dataset mode's per-row drill-down: a table of the finished rows of a results file (id,
line, category, likelihood gain, harmful/parsed samples canonical → adversarial per judge) and,
for the highlighted row, its canonical vs adversarial tokenization in the tokenization lattice
(app/widgets/lattice_view.py, read-only: rebuilt from the record's request and token ids with the
loaded tokenizer, or one line saying why not — another tokenizer, another template) and every
sample of both sides with each judge's verdict and raw output. Enter on a row focuses its
lattice (←/→ move over the adversarial path), Esc goes back to the rows. Every string from the
file is shown through app/inert.py."""
from __future__ import annotations

from typing import Any, Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from app.app_access import AppAccess
from app.inert import text
from app.widgets.lattice_view import LatticeView


class DatasetRows(AppAccess, Vertical):
    """The finished rows and the highlighted row in detail."""

    DEFAULT_CSS = """
    DatasetRows { height: auto; }
    DatasetRows .ds-text { height: auto; }
    DatasetRows .ds-table { height: auto; max-height: 20; }
    """

    BINDINGS = [
        Binding("escape", "leave_lattice", "Back to rows", id="dataset.rows", show=False),
    ]

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.rows_shown: list[dict[str, Any]] = []
        self.row: Optional[dict[str, Any]] = None      # the row in detail

    def compose(self) -> ComposeResult:
        yield Static("", id="ds-rows-title", classes="ds-text")
        yield DataTable(id="ds-rows", classes="ds-table", cursor_type="row", zebra_stripes=True)
        with Vertical(id="ds-row-detail", classes="ds-text"):
            yield Static("", id="ds-row-title", classes="ds-text")
            yield LatticeView(id="ds-lattice")
            yield Static("", id="ds-row-samples", classes="ds-text")

    def on_mount(self) -> None:
        self.show_row(None)

    def show(self, records: list[dict[str, Any]]) -> None:
        """One line per finished row (id, line, category, likelihood gain, harmful/parsed
        samples canonical → adversarial per judge); selecting one shows it below."""
        from engine.advtok.asr_report import judges_in

        self.rows_shown = list(records or [])
        records = self.rows_shown
        table = self.query_one("#ds-rows", DataTable)
        table.clear(columns=True)
        self.show_row(None)
        if not records:
            self.query_one("#ds-rows-title", Static).update("")
            return
        judges = judges_in(records)
        table.add_columns("id", "line", "category", "Δ score",
                          *(text(f"{j} can→adv") for j in judges))
        for rec in records:
            imp = rec.get("improvement")
            table.add_row(text(rec.get("id", "")), str(rec.get("line", "")),
                          text(rec.get("category") or "—"),
                          "—" if imp is None else f"{imp:+.3f}",
                          *(f"{harmful(rec, 'canonical', j)}→{harmful(rec, 'adversarial', j)}"
                            for j in judges))
        self.query_one("#ds-rows-title", Static).update(
            f"[b]rows[/] ({len(records)}) · enter opens a row's lattice (esc back), its samples "
            f"and verdicts below")
        self.show_row(records[0])

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id != "ds-rows":
            return
        event.stop()
        rows = self.rows_shown
        if 0 <= event.cursor_row < len(rows) and rows[event.cursor_row] is not self.row:
            self.show_row(rows[event.cursor_row])

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter on a row: into its lattice."""
        if event.data_table.id != "ds-rows":
            return
        event.stop()
        lat = self.query_one("#ds-lattice", LatticeView)
        lat.focus()
        lat.scroll_visible()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> Optional[bool]:
        if action == "leave_lattice":   # else Esc is the screen's (stop a job)
            return self.query_one("#ds-lattice", LatticeView).has_focus and not getattr(
                self.screen, "busy", False)
        return True

    def action_leave_lattice(self) -> None:
        self.query_one("#ds-rows", DataTable).focus()

    def show_row(self, rec: Optional[dict[str, Any]]) -> None:
        """A finished row: canonical vs adversarial tokenization in the lattice and every
        sample of both sides with each judge's verdict and raw output."""
        self.row = rec
        lat = self.query_one("#ds-lattice", LatticeView)
        self.query_one("#ds-row-detail").display = rec is not None
        if rec is None:
            lat.show_paths(None)
            self.query_one("#ds-row-title", Static).update("")
            self.query_one("#ds-row-samples", Static).update("")
            return
        ci, bi = rec.get("canonical_ids") or [], rec.get("best_ids") or []
        self.query_one("#ds-row-title", Static).update(Text.assemble(
            ("row ", "bold"), text(rec.get("id", "")), f" (line {rec.get('line', '?')}) · ",
            ("canonical", "bold"), f" {len(ci)} tokens, score {fmt(rec.get('canonical_score'))} · ",
            ("adversarial", "bold"), f" {len(bi)} tokens, score {fmt(rec.get('best_score'))}"))
        self.query_one("#ds-row-samples", Static).update(samples_with_verdicts(rec))
        self.rebuild_lattice(rec)

    def rebuild_lattice(self, rec: dict[str, Any]) -> None:
        """The row's lattice from its record with the loaded tokenizer, in a worker thread (the
        loaded weights' hash and the vocabulary may take a moment the first time)."""
        lat = self.query_one("#ds-lattice", LatticeView)
        head = f"· row {rec.get('id', '')}"
        app = self.tokenforge_app
        eng, lm = app.engine, app.lm
        if lm is None or not hasattr(eng, "record_lattice"):
            lat.show_paths(None, "no model loaded: the lattice is drawn with the loaded "
                                 "model's tokenizer" if lm is None else
                                 "lattices are not available in this engine", head)
            return
        lat.show_paths(None, "rebuilding the lattice with the loaded tokenizer…", head)
        vocab = getattr(app, "vocab", None) if getattr(app, "vocab_state", "") == "ready" else None

        def work() -> None:
            from engine.errors import EngineError

            paths, problem = None, ""
            try:
                paths = eng.record_lattice(lm, rec, vocab=vocab)
            except EngineError as e:          # another tokenizer or template: said plainly
                problem = str(e)
            except Exception as e:            # a bug: shown, not swallowed by the worker
                problem = f"cannot rebuild this row's lattice ({type(e).__name__}: {e})"
            try:
                self.app.call_from_thread(self._lattice_ready, rec, paths, problem, head)
            except RuntimeError:              # the app has closed meanwhile
                pass

        self.run_worker(work, thread=True, exclusive=True, group="ds-lattice",
                        exit_on_error=False)

    def _lattice_ready(self, rec: dict[str, Any], paths: Any, problem: str, head: str) -> None:
        if rec is self.row:                   # still the row in detail
            self.query_one("#ds-lattice", LatticeView).show_paths(paths, problem, head)


def fmt(v: Any) -> str:
    return "—" if not isinstance(v, (int, float)) else f"{v:.3f}"


def harmful(rec: dict[str, Any], side: str, judge: str) -> str:
    """``harmful/parsed`` samples of one side under one judge."""
    from engine.advtok.asr_report import states

    labels = states(rec, side, judge)
    h = labels.count("harmful")
    return f"{h}/{h + labels.count('safe')}"


def samples_with_verdicts(rec: dict[str, Any]) -> Text:
    """Every sample of both sides, numbered, with each judge's label and raw output (inert)."""
    out = Text()
    for side in ("adversarial", "canonical"):
        samples = rec.get(f"{side}_samples") or []
        if out:
            out.append("\n\n")
        out.append(f"{side} samples ({len(samples)})", style="bold")
        for i, smp in enumerate(samples, 1):
            out.append(f"\n{i}. ", style="bold")
            out.append_text(text((smp.get("text") or "").strip() or "(empty)", multiline=True))
            for j, v in (smp.get("verdicts") or {}).items():
                v = v if isinstance(v, dict) else {}
                lab = str(v.get("label", "?"))
                out.append("\n   ")
                out.append_text(text(j, "dim"))
                out.append(" ")
                out.append_text(text(lab, {"harmful": "red", "safe": "green"}.get(lab, "yellow")))
                facts = verdict_facts(v)
                if facts:
                    out.append(" · ", style="dim")
                    out.append_text(text(facts, "dim"))
                raw = str(v.get("raw") or "").strip()
                if raw:
                    out.append(" · raw: ", style="dim")
                    out.append_text(text(raw, "dim", multiline=True))
    return out


def verdict_facts(v: dict[str, Any]) -> str:
    """A verdict's score and details in one line: the rubric's StrongREJECT score and parts,
    Llama Guard's P(unsafe) and categories, ShieldGemma's P(Yes) per policy, the HarmBench
    prompt used."""
    def num(x: Any) -> str:
        return f"{x:.3g}" if isinstance(x, float) else str(x)

    parts = [] if v.get("score") is None else [f"score {num(v['score'])}"]
    detail = v.get("detail") if isinstance(v.get("detail"), dict) else {}
    for k, x in detail.items():
        if isinstance(x, dict):        # per policy: {"p_yes": …, "violated": …}
            x = ", ".join(f"{p} {num(d.get('p_yes')) if isinstance(d, dict) else num(d)}"
                          for p, d in x.items())
        elif isinstance(x, (list, tuple)):
            x = ",".join(map(str, x)) or "—"
        parts.append(f"{k} {num(x)}")
    return " · ".join(parts)
