"""The attack screen's tokenization lattice: the request's characters with three paths drawn
over them — canonical, the search's best adversarial one, and an edited one with a cursor.
Keys (focus it with tab): ←/→ move the cursor, s split the token, m merge it with the next,
, / . move the boundary after it one character left/right, b start from the best path, r back to
canonical, g search from the edited path (init = given). Each edit is rescored through the
run's cached scorer (engine/advtok/lattice.py) in a runner job.

The dataset mode's drill-down shows a finished row in the same view, read-only
(:meth:`LatticeView.show_paths`): its canonical and adversarial paths rebuilt from the results
record with the loaded tokenizer (engine/advtok/record_lattice.py), ←/→ moving the cursor over
the adversarial path; a record made with another tokenizer is named in one line instead."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import Static

from app.app_access import AppAccess
from app.inert import tesc, text as inert
from app.messages import (ControlsChanged, JobCancelled, JobFailed, JobFinished, JobStarted, RunFromIds,
                          WidgetJobEnded, WidgetJobStarted)
from app.widgets.token_strip import PALETTE, display_token

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

CURSOR = Style(color="black", bgcolor="#e0c050", bold=True)
LABEL_W = 12


def char_spans_of(tokens: list[str]) -> list[tuple[int, int]]:
    out, pos = [], 0
    for t in tokens:
        out.append((pos, pos + len(t)))
        pos += len(t)
    return out


def edge_starts(lat: Any) -> str:
    """One glyph per character of the request: how many diagram edges (vocabulary tokens that
    keep the path completable) start there — the lattice's width at that point."""
    out, pos = [], 0
    for ch in lat.text:
        n = len(lat.mdd.out[pos])
        out.append("·" if n == 0 else (str(n) if n < 10 else "+"))
        pos += len(ch.encode("utf-8"))
    return "".join(out)


def path_rows(text: str, rows: list[tuple[str, list[tuple[int, int]], Optional[int]]],
              width: int, starts: str = "") -> Text:
    """Rows of token spans drawn over the same characters, cut into windows of ``width``
    characters so the rows stay aligned however long the request is; ``starts`` (one glyph per
    character) is drawn above them."""
    width = max(8, width)
    out = Text()
    for w0 in range(0, max(1, len(text)), width):
        w1 = min(len(text), w0 + width)
        if starts:
            out.append(f"{'edges from':<{LABEL_W}}", style="dim")
            out.append(starts[w0:w1] + "\n", style="dim cyan")
        for label, spans, cursor in rows:
            out.append(f"{label:<{LABEL_W}}", style="dim")
            for k, (s, e) in enumerate(spans):
                a, b = max(s, w0), min(e, w1)
                if a >= b:
                    continue
                style = CURSOR if k == cursor else PALETTE[k % 2]
                out.append(display_token(text[a:b]), style=style)
            out.append("\n")
        out.append("\n")
    return out


class LatticeView(AppAccess, Vertical, can_focus=True):
    """Editable tokenization of the last attack's request."""

    DEFAULT_CSS = """
    LatticeView { height: auto; padding: 0 1; border-top: solid $panel; }
    LatticeView:focus { border-top: solid $accent; }
    """

    BINDINGS = [
        Binding("left", "move(-1)", "Prev token", id="lattice.prev", show=False),
        Binding("right", "move(1)", "Next token", id="lattice.next", show=False),
        Binding("s", "edit('split')", "Split", id="lattice.split"),
        Binding("m", "edit('merge')", "Merge", id="lattice.merge"),
        Binding("comma", "edit('left')", "Boundary ←", id="lattice.boundary_left"),
        Binding("full_stop", "edit('right')", "Boundary →", id="lattice.boundary_right"),
        Binding("b", "edit('best')", "From best", id="lattice.best"),
        Binding("r", "edit('reset')", "Canonical", id="lattice.reset"),
        Binding("g", "seed", "Search from here", id="lattice.seed"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.result: Any = None
        self.lattice: Any = None
        self.cursor = 0
        self.last = ""
        self._job: Any = None
        self._pending: Optional[str] = None
        self.paths: Any = None      # a dataset row's RecordPaths (read-only mode)
        self.problem = ""           # why a dataset row's lattice is not drawn
        self.readonly = False

    def compose(self) -> ComposeResult:
        yield Static("[b]tokenization lattice[/] [dim]— run an attack; then tab here to edit[/]",
                     id="lat-head")
        yield Static("", id="lat-rows")
        yield Static("", id="lat-status")

    # -- the attack screen's hook -------------------------------------------------------------
    def show_result(self, r: Any) -> None:
        """A finished (or stopped) attack: draw its canonical and best paths; edits start from
        the best one."""
        self.result = r
        self.lattice = None
        self.readonly, self.paths, self.problem = False, None, ""
        self.cursor = 0
        self.last = ""
        self.refresh_view()

    def show_paths(self, paths: Any, problem: str = "", head: str = "") -> None:
        """A dataset row (read-only): ``paths`` (engine.advtok.record_lattice.RecordPaths) drawn
        with the diagram's widths, or ``problem`` — why it is not drawn — in its place; ``head``
        names the row. Edits are off: they would rescore under the single-request form."""
        self.readonly = True
        self.result, self.lattice = None, None
        self.paths, self.problem = paths, problem
        self.cursor, self.last = 0, ""
        if self.children:
            self.query_one("#lat-head", Static).update(
                "[b]tokenization lattice[/]" + (f" {tesc(head)}" if head else "")
                + " [dim]— rebuilt from the record with the loaded tokenizer; tab here, ←/→ move[/]")
        self.refresh_view()
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> Optional[bool]:
        """Read-only (a dataset row): only the cursor moves."""
        if self.readonly and action in ("edit", "seed"):
            return False
        return True

    @property
    def busy(self) -> bool:
        return self._job is not None and not self._job.done

    # -- view ---------------------------------------------------------------------------------
    def refresh_view(self) -> None:
        if not self.children:
            return
        r = self.result
        rows_w = self.query_one("#lat-rows", Static)
        status = self.query_one("#lat-status", Static)
        if self.readonly:
            self.refresh_paths(rows_w, status)
            return
        if r is None or not getattr(r, "canonical_tokens", None):
            rows_w.update("")
            status.update("")
            return
        text = "".join(r.canonical_tokens)
        rows = [("canonical", char_spans_of(r.canonical_tokens), None),
                ("adversarial", char_spans_of(r.best_tokens), None)]
        lat = self.lattice
        if lat is not None:
            rows.append(("edited", lat.char_spans(), self.cursor))
        width = max(20, (self.size.width or 100) - LABEL_W - 3)
        rows_w.update(path_rows(text, rows, width, edge_starts(lat) if lat is not None else ""))
        if lat is None:
            status.update("[dim]s split · m merge · , . move a boundary · b best · r canonical · "
                          "g search from the edited path (the first edit builds the scorer)[/]")
            return
        d = lat.score - lat.canonical_score
        toks = lat.tokens()
        cur = toks[self.cursor] if 0 <= self.cursor < len(toks) else ""
        status.update(
            f"edited: {len(lat.ids)} tokens · score [b]{lat.score:.3f}[/] ({d:+.3f} vs canonical) · "
            f"cursor {self.cursor}: {tesc(repr(display_token(cur)))} id {lat.ids[self.cursor]}"
            + (f" · {self.last}" if self.last else ""))

    def refresh_paths(self, rows_w: Static, status: Static) -> None:
        """The read-only view of a dataset row: both recorded paths, the cursor on the
        adversarial one, and what the token under it is."""
        p = self.paths
        if p is None:
            rows_w.update(inert(self.problem, "yellow") if self.problem else "")
            status.update("")
            return
        rows = [("canonical", p.char_spans(p.canonical), None),
                ("adversarial", p.char_spans(p.adversarial), self.cursor)]
        width = max(20, (self.size.width or 100) - LABEL_W - 3)
        rows_w.update(path_rows(p.text, rows, width, edge_starts(p)))
        toks = p.tokens(p.adversarial)
        i = min(self.cursor, len(toks) - 1)
        span = p.char_spans(p.adversarial)[i]
        shared = span in set(p.char_spans(p.canonical))
        line = Text.assemble(
            f"canonical {len(p.canonical)} tokens · adversarial {len(p.adversarial)} tokens · "
            f"cursor {i}: ", (repr(display_token(toks[i])), "bold"), f" id {p.adversarial[i]} · ",
            ("a canonical token too", "green") if shared else ("not in the canonical", "yellow"))
        for note in p.notes:
            line.append("\n")
            line.append_text(inert(note, "dim"))
        status.update(line)

    def on_resize(self) -> None:
        self.refresh_view()

    # -- actions ------------------------------------------------------------------------------
    def action_move(self, delta: int) -> None:
        n = len(self.lattice.ids) if self.lattice is not None else (
            len(self.result.best_ids) if self.result is not None else
            len(self.paths.adversarial) if self.paths is not None else 0)
        if n:
            cursor = max(0, min(n - 1, self.cursor + int(delta)))
            if cursor != self.cursor:
                self.last = ""  # the last edit's note ("token 0 cannot be split") was about there
            self.cursor = cursor
            self.refresh_view()

    def action_edit(self, what: str) -> None:
        if self.result is None:
            self.notify("Run an attack first: the lattice edits its request", severity="warning")
            return
        self._start(what)

    def action_seed(self) -> None:
        if self.lattice is None:
            self.notify("Edit the tokenization first (s, m, , or .)", severity="warning")
            return
        self.post_message(RunFromIds(list(self.lattice.ids)))

    def _work(self, what: str, lm: LoadedModel, vocab: Any, *, progress: Any, cancel: Any) -> Any:
        """Worker thread: build the lattice once (vocab, diagram, scorer prefix), then edit."""
        from engine.advtok.lattice import TokenLattice

        lat = self.lattice
        if lat is None:
            r = self.result
            cfg = r.config or {}
            lat = TokenLattice(lm, r.request, r.response, r.system, vocab=vocab,
                               length_norm=cfg.get("length_norm", True))
            lat.reset(r.best_ids)
            self.lattice = lat
        i = min(self.cursor, len(lat.ids) - 1)
        if what == "split":
            return lat.split(i)
        if what == "merge":
            return lat.merge(i)
        if what in ("left", "right"):
            return lat.shift(i, -1 if what == "left" else 1)
        if what == "best":
            return lat.reset(self.result.best_ids)
        return lat.reset()

    def _start(self, what: str) -> None:
        app = self.tokenforge_app
        if self.busy or getattr(self.screen, "busy", False):
            self.notify("A job is running: Esc to stop it first", severity="warning")
            return
        if app.lm is None:
            self.notify("No model loaded", severity="warning")
            return
        vocab = app.vocab if app.vocab_state == "ready" else None
        self._job = app.runner.start("advtok", self._work, what, app.lm, vocab, target=self,
                                     params={"lattice": what})
        self.post_message(WidgetJobStarted(self._job))
        self.query_one("#lat-head", Static).update(f"[b]tokenization lattice[/] [yellow]{what}…[/]")

    def _mine(self, m: Any) -> bool:
        return self._job is not None and m.job_id == self._job.id

    def on_job_started(self, m: JobStarted) -> None:
        if self._mine(m):
            m.stop()

    async def on_job_finished(self, m: JobFinished) -> None:
        if not self._mine(m):
            return
        m.stop()
        ed = m.result
        self.cursor = ed.cursor
        self.last = f"{ed.what}, rescored in {ed.seconds:.2f} s"
        self._end()

    async def on_job_cancelled(self, m: JobCancelled) -> None:
        if self._mine(m):
            m.stop()
            self.last = f"cancelled ({m.reason})"
            self._end()

    async def on_job_failed(self, m: JobFailed) -> None:
        if self._mine(m):
            m.stop()
            self.last = f"[red]{tesc(m.message)}[/]"
            self._end()

    def _end(self) -> None:
        self.query_one("#lat-head", Static).update("[b]tokenization lattice[/]")
        self.refresh_view()
        self.post_message(ControlsChanged())  # the screen is no longer busy with this edit
