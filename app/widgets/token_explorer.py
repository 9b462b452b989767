"""The chat's token explorer: the last answer token by token, coloured by probability (c), a
selected token (←/→ or a click) with its id, log-probability, entropy and top-k alternatives;
↑/↓ + Enter forces an alternative and continues the answer from there (the KV cache is forked at
that position: only the new suffix is decoded); [ / ] move between the variants at the selected
position ("< 2/3 >"); l shows the logit lens there; p the prompt's tokens with ids and
surprisal. Every engine call runs through the runner as the chat screen's job (Esc stops it)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from app.inert import notice, tesc
from textual.widgets import Static

from app.app_access import AppAccess
from app.messages import (JobCancelled, JobFailed, JobFinished, JobStarted, TokensGenerated,
                          WidgetJobEnded, WidgetJobStarted)

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

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
    """Per-token view of the chat's last answer, with force-and-branch."""

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
        Binding("c", "colours", "Colours", id="tokens.colours"),
        Binding("l", "lens", "Logit lens", id="tokens.lens"),
        Binding("p", "prompt", "Prompt tokens", id="tokens.prompt"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.answers: Any = None
        self.session: Any = None
        self.branch = 0
        self.sel = 0
        self.alt = 0
        self.colour = False
        self.top_k = 5
        self._recorder: Any = None
        self._job: Any = None
        self._job_kind = ""
        self.lens_text = ""
        self.prompt_text = ""

    def compose(self) -> ComposeResult:
        yield Static("[dim]tokens: send a message; then tab here (←/→ select, c colours)[/]",
                     id="tx-head")
        yield TokenLine("", id="tx-tokens")
        yield Static("", id="tx-detail")
        yield Static("", id="tx-lens")
        yield Static("", id="tx-prompt")

    # -- the chat screen's hooks --------------------------------------------------------------
    def observer(self, lm: LoadedModel) -> Any:
        """A fresh recorder for the next answer (the decoding loop's observe callback)."""
        self.answers = None  # the old tree belongs to an answer that is being replaced
        self._recorder = None
        if getattr(lm, "tokenizer", None) is None:  # not a real model (the UI tests' fake)
            return None
        from engine.lm.tokeninfo import TokenRecorder

        self._recorder = TokenRecorder(lm.tokenizer, self.top_k)
        return self._recorder

    def answer_done(self, session: Any, sampling: Any = None) -> None:
        """The last answer is complete: start its branch tree (a fork of the session's cache)."""
        from engine.lm.branching import tree_from_session

        if self._recorder is None or not hasattr(session, "fwd") or not session.turns:
            return
        cfg = sampling
        self.answers = tree_from_session(session, self._recorder.infos, self.top_k, cfg)
        self.session = session
        self.branch, self.sel, self.alt = 0, 0, 0
        self.lens_text = self.prompt_text = ""
        self.refresh_view()

    def clear(self) -> None:
        self.answers = self.session = None
        self.lens_text = self.prompt_text = ""
        self.refresh_view()

    @property
    def busy(self) -> bool:
        return self._job is not None and not self._job.done

    def can_branch(self) -> bool:
        return self.answers is not None and not self.busy

    # -- view ---------------------------------------------------------------------------------
    @property
    def current(self) -> Any:
        return None if self.answers is None else self.answers.get(self.branch)

    def refresh_view(self) -> None:
        if not self.children:
            return
        b = self.current
        head = self.query_one("#tx-head", Static)
        line = self.query_one("#tx-tokens", TokenLine)
        detail = self.query_one("#tx-detail", Static)
        self.query_one("#tx-lens", Static).update(self.lens_text)
        self.query_one("#tx-prompt", Static).update(self.prompt_text)
        if b is None or not b.infos:
            head.update("[dim]tokens: send a message; then tab here (←/→ select, c colours)[/]")
            line.update("")
            detail.update("")
            return
        self.sel = max(0, min(self.sel, len(b.infos) - 1))
        detail.display = self.has_focus  # the details take room: shown while the tokens have focus
        forks = set(self.answers.fork_points(b.id))
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
        n_var = len(self.answers.variants(b.id, self.sel))
        nav = f" · variants here {self.answers.label(b.id, self.sel)} ([ / ])" if n_var > 1 else ""
        head.update(f"[b]tokens[/] · branch {b.id + 1} of {len(self.answers.branches)} · colours "
                    f"{'on' if self.colour else 'off'} (c){nav}")
        detail.update(self._detail(b.infos[self.sel]))

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

    def action_variant(self, delta: int) -> None:
        b = self.current
        if b is None or self.busy:
            return
        target = self.answers.step(b.id, self.sel, int(delta))
        if target != b.id:
            self._show_branch(target)

    def _show_branch(self, branch_id: int) -> None:
        from engine.lm.branching import show_in_session

        self.branch = branch_id
        if self.session is not None:
            show_in_session(self.session, self.answers, branch_id)
        self.refresh_view()
        self.call_later(self._update_answer)

    async def _update_answer(self) -> None:
        from app.widgets.chat_messages import AssistantMessage, answer_figures

        b = self.current
        answers = list(self.screen.query(AssistantMessage))
        if b is None or not answers:
            return
        r = b.result
        figs = (answer_figures(r) if r is not None else f"{len(b.token_ids)} tokens")
        await answers[-1].finish(b.text, figs + f" · branch {b.id + 1}/{len(self.answers.branches)}")

    def action_force(self) -> None:
        b = self.current
        if b is None or not b.infos:
            return
        alts = b.infos[self.sel].alternatives
        if not alts:
            return
        tok = alts[self.alt].id
        if tok == b.token_ids[self.sel]:
            self.notify("That is the token already there: pick another alternative (↑/↓)",
                        severity="warning")
            return
        self._start("force", self.answers.force, b.id, self.sel, tok)

    def regenerate(self) -> bool:
        """A new answer to the same message, kept as a sibling. False when there is no tree."""
        if not self.can_branch():
            return False
        self._start("regenerate", self.answers.generate_root)
        return True

    def action_lens(self) -> None:
        b = self.current
        if b is None or not b.infos:
            return
        from engine.lm.logit_lens import logit_lens

        ids = self.answers.context + b.token_ids
        pos = self.answers.n_context + self.sel - 1
        self._start("lens", logit_lens, self.answers.lm, ids, [pos], 3, stream=False)

    def action_prompt(self) -> None:
        if self.answers is None:
            return
        from engine.lm.surprisal import score_ids

        self._start("prompt", score_ids, self.answers.lm, self.answers.context, 1, stream=False)

    # -- jobs ---------------------------------------------------------------------------------
    def _start(self, what: str, fn: Any, *args: Any, stream: bool = True) -> None:
        screen: Any = self.screen
        if self.busy or getattr(screen, "busy", False):
            self.notify("A job is running: Esc to stop it first", severity="warning")
            return

        def work(*a: Any, progress: Any, cancel: Any, on_token: Any = None) -> Any:
            if stream:
                return fn(*a, on_token=on_token, progress=progress, cancel=cancel)
            return fn(*a)

        self._job_kind = what
        self._job = self.tokenforge_app.runner.start("chat", work, *args, target=self,
                                                     stream=stream, params={"explorer": what})
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
        if kind in ("force", "regenerate"):
            self.sel = r.fork_at if kind == "force" else 0
            self.alt = 0
            self._show_branch(r.id)
        elif kind == "lens":
            self.lens_text = self._lens_text(r)
        elif kind == "prompt":
            self.prompt_text = self._prompt_text(r)
        self._end("finished", f"{kind} done in {m.elapsed:.1f} s")

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
