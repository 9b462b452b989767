"""The dataset mode's per-row drill-down: a table of the finished rows of a results file (id,
line, category, likelihood gain, harmful/parsed samples canonical → adversarial per judge) and,
for the highlighted row, its canonical vs adversarial tokenization (boundaries and ids, changed
spans underlined) and every sample of both sides with each judge's verdict and raw output. Every
string from the file is shown through app/inert.py."""
from __future__ import annotations

from typing import Any, Optional

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from app.inert import text
from app.widgets.token_strip import TokenStrip


class DatasetRows(Vertical):
    """The finished rows and the highlighted row in detail."""

    DEFAULT_CSS = """
    DatasetRows { height: auto; }
    DatasetRows .ds-text { height: auto; }
    DatasetRows .ds-table { height: auto; max-height: 20; }
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.rows_shown: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        yield Static("", id="ds-rows-title", classes="ds-text")
        yield DataTable(id="ds-rows", classes="ds-table", cursor_type="row", zebra_stripes=True)
        with Vertical(id="ds-row-detail", classes="ds-text"):
            yield Static("", id="ds-canon-title", classes="ds-text")
            yield TokenStrip(id="ds-canon")
            yield Static("", id="ds-adv-title", classes="ds-text")
            yield TokenStrip(id="ds-adv")
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
            f"[b]rows[/] ({len(records)}) · select one for its tokenizations, samples and verdicts")
        self.show_row(records[0])

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id != "ds-rows":
            return
        event.stop()
        rows = self.rows_shown
        if 0 <= event.cursor_row < len(rows):
            self.show_row(rows[event.cursor_row])

    def show_row(self, rec: Optional[dict[str, Any]]) -> None:
        """A finished row: canonical vs adversarial tokenization (boundaries and ids, changed
        spans underlined) and every sample of both sides with each judge's verdict and raw
        output."""
        canon = self.query_one("#ds-canon", TokenStrip)
        adv = self.query_one("#ds-adv", TokenStrip)
        self.query_one("#ds-row-detail").display = rec is not None
        if rec is None:
            canon.clear()
            adv.clear()
            self.query_one("#ds-row-samples", Static).update("")
            return
        ct, ci = rec.get("canonical_tokens") or [], rec.get("canonical_ids") or []
        bt, bi = rec.get("best_tokens") or [], rec.get("best_ids") or []
        canon.set_tokens(ct, ci)
        adv.set_tokens(bt, bi, reference=ct)
        self.query_one("#ds-canon-title", Static).update(Text.assemble(
            ("row ", "bold"), text(rec.get("id", "")), f" (line {rec.get('line', '?')}) · ",
            ("canonical", "bold"), f" {len(ci)} tokens · score {fmt(rec.get('canonical_score'))}"))
        self.query_one("#ds-adv-title", Static).update(Text.assemble(
            ("adversarial", "bold"), f" {len(bi)} tokens · score {fmt(rec.get('best_score'))} ",
            ("(underlined: spans not in the canonical)", "dim")))
        self.query_one("#ds-row-samples", Static).update(samples_with_verdicts(rec))


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
                raw = str(v.get("raw") or "").strip()
                if raw:
                    out.append(" · raw: ", style="dim")
                    out.append_text(text(raw, "dim", multiline=True))
    return out
