"""The chat's token explorer: one turn's answer token by token (the last turn, or the one chosen
with , / . or by selecting its message in the transcript), coloured by probability (c), a
selected token (←/→ or a click) with its id, log-probability, entropy and top-k alternatives;
↑/↓ + Enter forces an alternative and continues the answer from there as a new variant of that
turn (streamed into the transcript by the chat screen; the KV cache is forked at that position);
[ / ] move between the variants at the selected position ("< 2/3 >"; at the first token: every
variant of the turn, regenerations and edited messages included); l shows the logit lens there;
p the prompt's tokens with ids and surprisal.

The data is the chat session's own variants tree (``ChatSession.nodes``, navigated with
``engine.lm.branching``): the same tree the session store saves, so a reopened session is
browsable exactly as a live one. The lens and prompt views run as this widget's jobs."""
from __future__ import annotations

import math
from typing import Any, Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from app.inert import notice, tesc
from textual.widgets import Static

from app.app_access import AppAccess
from app.messages import (JobCancelled, JobFailed, JobFinished, JobStarted, TokensGenerated,
                          WidgetJobEnded, WidgetJobStarted)

# probability bands → colour (the chosen token's own probability)
BANDS = ((0.9, "green"), (0.5, "yellow"), (0.2, "dark_orange"), (0.0, "red"))


def band(prob: float) -> str:
    return next(c for lo, c in BANDS if prob >= lo)


def show_piece(s: str) -> str:
    """A token's text with whitespace made visible."""
    return s.replace("\n", "⏎").replace("\t", "⇥") or "∅"


class TokenLine(Static):
    """The answer's tokens; a click on one selects it."""

    def action_pick(self, index: int) -> None:
        parent = self.parent
        while parent is not None and not isinstance(parent, TokenExplorer):
            parent = parent.parent
        if parent is not None:
            parent.select(int(index))
            parent.focus()


class TokenExplorer(AppAccess, Vertical, can_focus=True):
    """Per-token view of one turn's answer, with force-and-branch and variant navigation."""

    DEFAULT_CSS = """
    TokenExplorer { height: auto; max-height: 45%; overflow-y: auto; padding: 0 1;
                    border-top: solid $panel; }
    TokenExplorer:focus { border-top: solid $accent; }
    TokenExplorer #tx-tokens { margin: 0 0 1 0; }
    """

    BINDINGS = [
        Binding("left", "move(-1)", "Prev token", id="tokens.prev", show=False),
        Binding("right", "move(1)", "Next token", id="tokens.next", show=False),
        Binding("home", "move(-100000)", "First token", id="tokens.first", show=False),
        Binding("end", "move(100000)", "Last token", id="tokens.last", show=False),
        Binding("up", "alt(-1)", "Prev alternative", id="tokens.alt_prev", show=False),
        Binding("down", "alt(1)", "Next alternative", id="tokens.alt_next", show=False),
        Binding("enter", "force", "Force alternative", id="tokens.force"),
        Binding("left_square_bracket", "variant(-1)", "Prev variant", id="tokens.variant_prev"),
        Binding("right_square_bracket", "variant(1)", "Next variant", id="tokens.variant_next"),
        Binding("comma", "turn(-1)", "Prev turn", id="tokens.turn_prev"),
        Binding("full_stop", "turn(1)", "Next turn", id="tokens.turn_next"),
        Binding("c", "colours", "Colours", id="tokens.colours"),
        Binding("l", "lens", "Logit lens", id="tokens.lens"),
        Binding("p", "prompt", "Prompt tokens", id="tokens.prompt"),
    ]

    IDLE = "[dim]tokens: send a message; then tab here (←/→ select, c colours)[/]"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session: Any = None
        self.node: Optional[int] = None  # the exchange shown (an id in session.nodes)
        self.sel = 0
        self.alt = 0
        self.colour = False
        self._job: Any = None
        self._job_kind = ""
        self.lens_text = ""
        self.prompt_text = ""
        self.live = ""  # while an answer streams: what it is and how far it got

    def compose(self) -> ComposeResult:
        yield Static(self.IDLE, id="tx-head")
        yield TokenLine("", id="tx-tokens")
        yield Static("", id="tx-detail")
        yield Static("", id="tx-lens")
        yield Static("", id="tx-prompt")

    # -- the chat screen's hooks --------------------------------------------------------------
    def show_node(self, session: Any, node: Optional[int]) -> None:
        """Show exchange ``node`` of ``session`` (None: nothing)."""
        if getattr(session, "nodes", None) is None:  # not a real session (the UI tests' fake)
            session, node = None, None
        if node != self.node or session is not self.session:
            self.sel, self.alt = 0, 0
            self.lens_text = self.prompt_text = ""
        self.session, self.node = session, node
        self.refresh_view()

    def answer_done(self, session: Any) -> None:
        """An answer was added: show it (the conversation's last turn)."""
        path = getattr(session, "path", None)
        self.show_node(session, path[-1].id if path else None)

    def clear(self) -> None:
        self.session, self.node = None, None
        self.lens_text = self.prompt_text = ""
        self.refresh_view()

    def streaming_started(self, how: str) -> None:
        self.live = {"send": "answering", "regenerate": "regenerating", "force": "forced: continuing",
                     "edit": "answering the edited message"}.get(how, how) + "…"
        self._streamed = 0
        self.refresh_view()

    def streamed(self, text: str, n_total: int) -> None:
        """The screen's token messages: the explorer shows the answer growing."""
        if self.live:
            self._streamed = n_total
            self.query_one("#tx-head", Static).update(
                f"[yellow]{tesc(self.live)}[/] {n_total} token{'s' * (n_total != 1)} · "
                f"[dim]{tesc(show_piece(text[-40:]))}[/]")

    def streaming_ended(self) -> None:
        self.live = ""
        self.refresh_view()

    def node_on_path(self) -> Optional[int]:
        """The index in the session's path of the turn shown, or None."""
        path = getattr(self.session, "path", None) or []
        ids = [t.id for t in path]
        return ids.index(self.node) if self.node in ids else None

    @property
    def busy(self) -> bool:
        return self._job is not None and not self._job.done

    # -- view ---------------------------------------------------------------------------------
    @property
    def current(self) -> Any:
        nodes = getattr(self.session, "nodes", None)
        if nodes is None or self.node is None or not 0 <= self.node < len(nodes):
            return None
        return nodes[self.node]

    def refresh_view(self) -> None:
        if not self.children:
            return
        from engine.lm import branching as br

        b = self.current
        head = self.query_one("#tx-head", Static)
        line = self.query_one("#tx-tokens", TokenLine)
        detail = self.query_one("#tx-detail", Static)
        self.query_one("#tx-lens", Static).update(self.lens_text)
        self.query_one("#tx-prompt", Static).update(self.prompt_text)
        if self.live:
            head.update(f"[yellow]{tesc(self.live)}[/]")
            line.update("")
            detail.update("")
            return
        if b is None or not b.infos:
            head.update(self.IDLE if b is None else
                        f"[b]tokens[/] · {self._where(b)} · [dim]no token data for this answer[/]")
            line.update("")
            detail.update("")
            return
        nodes = self.session.nodes
        self.sel = max(0, min(self.sel, len(b.infos) - 1))
        detail.display = self.has_focus  # the details take room: shown while the tokens have focus
        forks = set(br.fork_points(nodes, b.id))
        parts = []
        for i, info in enumerate(b.infos):
            style = []
            if self.colour:
                style.append(band(info.prob))
            if i in forks:
                style.append("underline")
            if i == self.sel:
                style.append("reverse")
            if info.forced:
                style.append("italic")
            text = tesc(show_piece(info.text))
            css = " ".join(style)
            body = f"[{css}]{text}[/]" if css else text
            parts.append(f"[@click=pick({i})]{body}[/]")
        line.update("".join(parts))
        n_var = len(br.variants(nodes, b.id, self.sel))
        nav = f" · variants here {br.label(nodes, b.id, self.sel)} ([ / ])" if n_var > 1 else ""
        head.update(f"[b]tokens[/] · {self._where(b)} · colours "
                    f"{'on' if self.colour else 'off'} (c){nav}")
        detail.update(self._detail(b.infos[self.sel]))

    def _where(self, b: Any) -> str:
        from engine.lm.branching import turn_variants

        i = self.node_on_path()
        n = len(self.session.path)
        v = turn_variants(self.session.nodes, b.id)
        turn = f"turn {i + 1}/{n} (, .)" if i is not None else "turn"
        return turn + (f" · variant {v.index(b.id) + 1}/{len(v)}" if len(v) > 1 else "") + \
            (" · [yellow]stopped[/]" if b.state == "stopped" else "")

    def _detail(self, info: Any) -> str:
        rows = [f"#{self.sel} · id {info.id} · [b]{tesc(show_piece(info.text))}[/] · "
                f"p {100 * info.prob:.1f}% · logprob {info.logprob:.3f} · entropy "
                f"{info.entropy:.2f} nats" + (" · [i]forced[/]" if info.forced else "")]
        self.alt = max(0, min(self.alt, max(0, len(info.alternatives) - 1)))
        for j, a in enumerate(info.alternatives):
            mark = "▸" if j == self.alt else " "
            own = " (this token)" if a.id == info.id else ""
            rows.append(f" {mark} {tesc(show_piece(a.text)):<14} {100 * math.exp(a.logprob):5.1f}%"
                        f"  id {a.id}{own}")
        rows.append("[dim]↑/↓ choose · enter force and continue · l logit lens · p prompt[/]")
        return "\n".join(rows)

    def on_focus(self) -> None:
        self.refresh_view()

    def on_blur(self) -> None:
        self.refresh_view()

    def select(self, index: int) -> None:
        self.sel = index
        self.alt = 0
        self.refresh_view()

    # -- actions ------------------------------------------------------------------------------
    def action_move(self, delta: int) -> None:
        b = self.current
        if b is None or not b.infos:
            return
        self.select(max(0, min(len(b.infos) - 1, self.sel + int(delta))))

    def action_alt(self, delta: int) -> None:
        self.alt += int(delta)
        self.refresh_view()

    def action_colours(self) -> None:
        self.colour = not self.colour
        self.refresh_view()

    def action_turn(self, delta: int) -> None:
        """Show the previous / next turn of the conversation."""
        i = self.node_on_path()
        path = getattr(self.session, "path", None) or []
        if i is None or not path:
            return
        j = max(0, min(len(path) - 1, i + int(delta)))
        if j != i:
            self.show_node(self.session, path[j].id)

    def _busy_screen(self) -> bool:
        screen: Any = self.screen
        if self.busy or getattr(screen, "busy", False):
            notice(self, "A job is running: Esc to stop it first", severity="warning")
            return True
        return False

    def action_variant(self, delta: int) -> None:
        from engine.lm.branching import step

        b = self.current
        if b is None or self._busy_screen():
            return
        target = step(self.session.nodes, b.id, self.sel, int(delta))
        if target != b.id:
            self.run_worker(self.screen.show_variant(target), exclusive=True)  # type: ignore[attr-defined]

    def action_force(self) -> None:
        b = self.current
        if b is None or not b.infos or self._busy_screen():
            return
        alts = b.infos[self.sel].alternatives
        if not alts:
            return
        tok = alts[self.alt].id
        if tok == b.answer_ids[self.sel]:
            notice(self, "That is the token already there: pick another alternative (↑/↓)",
                        severity="warning")
            return
        i = self.node_on_path()
        if i is None:
            return
        self.run_worker(self.screen.start_force(i, self.sel, tok), exclusive=True)  # type: ignore[attr-defined]

    def _answer_context(self) -> list[int]:
        """The token ids before the shown answer (its turn's context)."""
        s, i = self.session, self.node_on_path()
        from engine.errors import InputError

        k = (i or 0) - len(s.dropped)
        if i is None or k < 0:
            raise InputError("this turn is no longer in the model's context")
        return s._rebuild(s.turns[:k]) + s._turn_ids(k, s.turns[k], with_answer=False)

    def action_lens(self) -> None:
        b = self.current
        if b is None or not b.infos or self._busy_screen():
            return
        from engine.errors import InputError
        from engine.lm.logit_lens import logit_lens

        try:
            ctx = self._answer_context()
        except InputError as e:
            notice(self, str(e), severity="warning")
            return
        pos = len(ctx) + self.sel - 1
        self._start("lens", logit_lens, self.session.lm, ctx + b.answer_ids, [pos], 3)

    def action_prompt(self) -> None:
        if self.current is None or self._busy_screen():
            return
        from engine.errors import InputError
        from engine.lm.surprisal import score_ids

        try:
            ctx = self._answer_context()
        except InputError as e:
            notice(self, str(e), severity="warning")
            return
        self._start("prompt", score_ids, self.session.lm, ctx, 1)

    # -- jobs ---------------------------------------------------------------------------------
    def _start(self, what: str, fn: Any, *args: Any) -> None:
        def work(*a: Any, progress: Any, cancel: Any) -> Any:
            return fn(*a)

        self._job_kind = what
        self._job = self.tokenforge_app.runner.start("chat", work, *args, target=self,
                                                     params={"explorer": what})
        # the screen is busy: Send waits, Esc stops this job, its progress bar follows it
        self.post_message(WidgetJobStarted(self._job, progress=True))
        self.query_one("#tx-head", Static).update(f"[yellow]{what}…[/]")

    def _mine(self, m: Any) -> bool:
        return self._job is not None and m.job_id == self._job.id

    def on_job_started(self, m: JobStarted) -> None:
        if self._mine(m):
            m.stop()

    def on_tokens_generated(self, m: TokensGenerated) -> None:
        if self._mine(m):
            m.stop()

    async def on_job_finished(self, m: JobFinished) -> None:
        if not self._mine(m):
            return
        m.stop()
        kind, r = self._job_kind, m.result
        if kind == "lens":
            self.lens_text = self._lens_text(r)
        elif kind == "prompt":
            self.prompt_text = self._prompt_text(r)
        self._end("finished", f"{kind} done in {m.elapsed:.1f} s")
        if kind in ("lens", "prompt"):  # rows added below the fold: scroll them into view
            self.call_after_refresh(self._reveal, "#tx-lens" if kind == "lens" else "#tx-prompt")

    def _reveal(self, wid: str) -> None:
        """Scroll the explorer (and any container above it) so the block's first row is at the
        top of the view: ~30 lens rows must not hide the prompt tokens added after them."""
        block = self.query_one(wid, Static)
        if block.region.height:
            block.scroll_visible(animate=False, top=True)

    async def on_job_cancelled(self, m: JobCancelled) -> None:
        if self._mine(m):
            m.stop()
            self._end("cancelled", f"{self._job_kind} cancelled ({m.reason})")

    async def on_job_failed(self, m: JobFailed) -> None:
        if self._mine(m):
            m.stop()
            notice(self, m.message, severity="error")
            self._end("failed", m.message)

    def _end(self, state: str, text: str) -> None:
        if self._job is not None:
            self.post_message(WidgetJobEnded(self._job.id, state, text))
        self.refresh_view()

    def _lens_text(self, tables: dict[int, Any]) -> str:
        rows = next(iter(tables.values()))
        info = self.current.infos[self.sel]
        lines = [f"[b]logit lens[/] before #{self.sel} ({tesc(show_piece(info.text))}): top 3 per layer"]
        for r in rows:
            tops = "  ".join(f"{tesc(show_piece(a.text))} {100 * math.exp(a.logprob):.0f}%"
                             for a in r.top)
            lines.append(f" L{r.layer:<3} {tops}")
        return "\n".join(lines)

    def _prompt_text(self, scored: list[Any]) -> str:
        parts = []
        for s in scored:
            bits = s.surprisal_bits
            fig = "–" if bits is None else f"{bits:.1f}"
            parts.append(f"[reverse]{tesc(show_piece(s.text))}[/][dim]{s.id}·{fig}b[/]")
        return "[b]prompt tokens[/] (text, id·surprisal bits)\n" + " ".join(parts)
