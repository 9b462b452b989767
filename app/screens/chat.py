"""Chat: a conversation over the engine's KV-cached ChatSession.

The answer streams into a ``MarkdownStream`` (it merges fragments itself, so the UI keeps up) and
gets one final ``Markdown.update`` when done (fixes half-rendered fences). Each answer shows its
figures: TTFT, tok/s, tokens, stop reason. Esc stops the answer (the partial answer stays, as in
the engine's conversation); ctrl+r answers the selected turn's message again (the old answer stays
as a variant: app/screens/chat_variants.py); ctrl+n starts a new conversation; ctrl+e exports
Markdown and JSON atomically into the export folder shown on screen. Every answer is saved as it
streams (app/saved_chat.py). Alt+C copies the selected message (tab or click onto it), else the
last answer.

The message box is a ``Composer`` (a TextArea): Enter sends; ctrl+j, alt+enter and shift+enter
(where the terminal tells it apart) insert a newline; it grows to a few lines, then scrolls.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Input, Label, Static, TextArea

from engine.errors import InputError
from engine.lm.config import ChatConfig

from app.inert import notice, styled, text as inert_text
from app.messages import JobCancelled, JobFailed, JobFinished, JobStarted, TokensGenerated
from app.saved_chat import SavedChat
from app.screens.base import ToolScreen
from app.screens.chat_transcript import TranscriptSync
from app.screens.chat_variants import ChatVariants
from app.widgets.chat_messages import AssistantMessage, UserMessage, answer_figures
from app.widgets.chat_gauges import ChatGauges, copy_code_block, copy_last_answer
from app.widgets.composer import Composer
from app.widgets.token_explorer import TokenExplorer
from app.validate import FieldCheck, parse_field

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


class ChatScreen(ChatVariants, TranscriptSync, ToolScreen):
    """Chat with the loaded model."""

    BINDINGS = [
        Binding("escape", "stop", "Stop", id="chat.stop", tooltip="Stop the current answer"),
        Binding("ctrl+r", "regenerate", "Regenerate", id="chat.regenerate",
                tooltip="Answer the selected turn's message again (the old answer stays a variant)"),
        Binding("ctrl+n", "new_chat", "New chat", id="chat.new", tooltip="Start a new conversation"),
        # priority: the message box binds ctrl+e to end-of-line (End still does that)
        Binding("ctrl+e", "export", "Export", id="chat.export", priority=True,
                tooltip="Export the conversation as Markdown and JSON"),
        Binding("alt+c", "copy_answer", "Copy", id="chat.copy", priority=True,
                tooltip="Copy the selected message (tab or click onto it), else the last answer "
                        "(OSC 52: works over SSH and tmux)"),
        Binding("alt+k", "copy_code", "Copy code", id="chat.copy_code", priority=True, show=False,
                tooltip="Copy a code block of the last answer (press again for the next)"),
        Binding("ctrl+t", "tokens", "Tokens", id="chat.tokens",
                tooltip="Token explorer: colour the last answer by probability and select tokens"),
    ]

    def __init__(self) -> None:
        super().__init__(id="chat-screen")
        self.session: Any = None
        self.session_lm: Optional[LoadedModel] = None
        self.reset_pending = False
        self.pending_system: Optional[str] = None
        self.answer: Optional[AssistantMessage] = None
        self.last_prompt = ""
        self.turns = 0
        self.last_export: list[Path] = []
        self.engine_error = ""  # the last failed turn's message; shown until the next send
        self.can_regenerate = False  # the last shown exchange is the session's last turn
        self.op = ""  # what the running exchange is: send, regenerate, force, edit
        #: (user, assistant) widgets of the turns the model still has in its context, in order
        self.exchanges: list[tuple[UserMessage, AssistantMessage]] = []
        #: the exchanges a running variant replaces: hidden, back on screen if it never begins
        self.hidden: list[tuple[UserMessage, AssistantMessage]] = []
        self.editing: Optional[int] = None  # the turn (index in the path) whose message is edited
        self.saved = SavedChat()  # the saved session behind this conversation (app/saved_chat.py)

    def palette_commands(self) -> Iterable[SystemCommand]:
        yield SystemCommand("chat: Send", "Send the message (enter)", self.action_send)
        yield SystemCommand("chat: Stop the answer", "Stop the answer being generated (escape)",
                            self.action_stop)
        yield SystemCommand("chat: Regenerate the last answer",
                            "Drop the last answer and answer the last message again (ctrl+r)",
                            self.action_regenerate)
        yield SystemCommand("chat: New conversation", "Clear the chat and start over (ctrl+n)",
                            self.action_new_chat)
        yield SystemCommand("chat: Export conversation",
                            "Write Markdown and JSON into the export folder (ctrl+e)",
                            self.action_export)
        yield SystemCommand("chat: Apply system prompt", "Use the system prompt field; new chat",
                            self.apply_system)

    # -- layout -------------------------------------------------------------------------------
    def compose_body(self) -> ComposeResult:
        system = self.tokenforge_app.settings.system_prompt
        self._system_shown = system
        with Vertical(id="chat-main"):
            with Horizontal(id="system-row", classes="form-row"):
                yield Label("System", classes="field-label")
                yield Input(value=system, id="system", placeholder="system prompt (optional)",
                            validators=[FieldCheck(self.parse_system)])
                yield Button("Apply · new chat", id="apply-system")
            yield VerticalScroll(id="messages")
            yield TokenExplorer(id="token-explorer")
            yield ChatGauges(id="chat-gauges")
            yield Static("", id="chat-status", classes="status-line")
            yield Static("", id="chat-error", classes="inline-error")
            with Horizontal(id="input-row", classes="form-row"):
                yield Composer(id="prompt", placeholder="Message — Enter to send · ctrl+j newline")
                yield Button("Send", id="send", variant="primary", disabled=True)
                yield Button("Stop", id="stop", variant="error", disabled=True)

    def on_unmount(self) -> None:
        super().on_unmount()
        self.saved.release()  # the app is closing: another process may continue the session

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#prompt", Composer).focus()
        self.refresh_controls()

    # -- state → controls ---------------------------------------------------------------------
    def model_changed(self) -> None:
        if not self.children:
            return
        app = self.tokenforge_app
        if app.lm is not None and self.session_lm is not None and app.lm is not self.session_lm:
            self.session = None  # a reloaded model needs a new conversation
            self.saved.forget()
            self.reset_pending = False
        self.refresh_controls()

    def settings_changed(self) -> None:
        """A profile chosen (or left) may set the system prompt: the field shows it unless you
        have typed in it; it applies to the next new chat, as the field's own Apply does."""
        if self.children:
            inp = self.query_one("#system", Input)
            want = self.tokenforge_app.settings.system_prompt
            if inp.value != want and inp.value == self._system_shown:
                inp.value = want
            self._system_shown = want
        self.refresh_controls()

    def _status(self) -> Any:
        app = self.tokenforge_app
        if self.editing is not None:
            return (f"[yellow]editing turn {self.editing + 1:d}: Enter answers the edited message "
                    "as a new variant (the old one stays) · Esc cancels[/]")
        if app.model_state == "loading":
            return "[yellow]loading the model… chat opens when it is ready[/]"
        if app.model_state == "failed":
            return styled("[red]no model: {e}[/] — open Settings (F6) to choose one", e=app.model_error)
        if app.model_state != "ready":
            return "no model loaded"
        s = app.settings.sampling
        if app.model_error:  # a reload that failed or was cancelled: the old model stays
            return styled("[yellow]{e}[/] — still using {m}", e=app.model_error, m=app.lm.describe())
        return styled("[dim]{m} · max {n} tokens · T {t:g} · top-p {p:g} · timeout {to} · "
                      "exports → {d}[/]", m=app.lm.describe(), n=s.max_new_tokens, t=s.temperature,
                      p=s.top_p, to=self._timeout_text(), d=app.settings.export_dir)

    def _timeout_text(self) -> str:
        t = self.tokenforge_app.runner.timeout_for("chat")
        return "none" if t is None else f"{t:.0f} s"

    def input_error(self) -> Optional[str]:
        """Why the message cannot be sent now (None: it can)."""
        try:
            parse_field(self.query_one("#prompt", Composer).value, ChatConfig, "prompt", "message")
        except InputError as e:
            return str(e)
        return None

    def refresh_controls(self) -> None:
        if not self.children:
            return
        app = self.tokenforge_app
        err = self.input_error()
        value = self.query_one("#prompt", Composer).value
        ready = app.model_state == "ready" and app.lm is not None
        self.query_one("#send", Button).disabled = bool(err) or not ready or self.busy
        self.query_one("#stop", Button).disabled = not self.busy
        # an empty box is not an error worth shouting about; anything else is shown inline
        shown = err if (err and value) else self.engine_error
        self.query_one("#chat-error", Static).update(inert_text(shown))
        self.query_one("#chat-status", Static).update(self._status())

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        if event.text_area.id == "prompt":
            self.refresh_controls()

    async def on_composer_submitted(self, event: Composer.Submitted) -> None:
        event.stop()
        await self.action_send()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "system":
            ok = event.validation_result is None or event.validation_result.is_valid
            self.query_one("#apply-system", Button).disabled = not ok

    async def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "system":
            self.apply_system()

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "send":
            await self.action_send()
        elif event.button.id == "stop":
            self.action_stop()
        elif event.button.id == "apply-system":
            self.apply_system()

    # -- actions ------------------------------------------------------------------------------
    async def action_send(self) -> None:
        app = self.tokenforge_app
        prompt = self.query_one("#prompt", Composer)
        err = self.input_error()
        if err or self.busy or app.lm is None:
            if err and prompt.value:
                self.query_one("#chat-error", Static).update(inert_text(err))
            self.refresh_controls()
            return
        text = prompt.value
        self.last_prompt = text
        prompt.value = ""
        if self.editing is not None:  # an edited message: a new variant of that turn
            turn, self.editing = self.editing, None
            await self.start_edit(turn, text)
            return
        await self._start_exchange("send", len(self.exchanges), text)

    def action_stop(self) -> None:
        if self.editing is not None and not self.busy:
            self.editing = None
            self.query_one("#prompt", Composer).value = ""
            self.refresh_controls()
            return
        super().action_stop()

    def _selected_message(self) -> Any:
        """The transcript message that has the focus (or holds it), else None."""
        w = self.focused
        while w is not None and not isinstance(w, (UserMessage, AssistantMessage)):
            w = w.parent if w.parent is not self else None
        return w

    def _path_index(self, w: Any) -> Optional[int]:
        """The turn (index in the session's path) a transcript message belongs to."""
        kids = list(self.query_one("#messages", VerticalScroll).children)
        if w not in kids or self.busy:
            return None
        i = kids.index(w) // 2
        path = getattr(self.session, "path", None)
        return i if path is not None and i < len(path) else None

    def on_descendant_focus(self, event: Any) -> None:
        """Selecting a message shows its turn in the token explorer."""
        w = self._selected_message()
        i = self._path_index(w) if w is not None else None
        if i is not None:
            self.explorer.show_node(self.session, self.session.path[i].id)

    def action_copy_answer(self) -> None:
        """Alt+C: the selected message (user or assistant), else the last answer."""
        w = self._selected_message()
        if w is None:
            copy_last_answer(self)
            return
        body = w.raw if isinstance(w, UserMessage) else w.text
        if not body:
            notice(self, "That message has no text yet", severity="warning")
            return
        self.app.copy_to_clipboard(body)
        notice(self, f"Copied the {'message' if isinstance(w, UserMessage) else 'answer'} "
                     f"({len(body):,} characters)")

    def edit_message(self, user: UserMessage) -> None:
        """e on a user message: its text goes into the box; Enter answers the edited message as
        a new variant of that turn (the old exchange stays, [ / ] in the token explorer)."""
        i = self._path_index(user)
        if i is None or self.busy:
            notice(self, "Wait for the answer to finish (or Esc) before editing", severity="warning")
            return
        if i < self.n_dropped or not hasattr(self.session, "edit"):
            notice(self, "That turn was dropped from the model's context: it cannot be edited",
                   severity="warning")
            return
        self.editing = i
        box = self.query_one("#prompt", Composer)
        box.value = user.raw
        box.focus()
        self.refresh_controls()

    def action_copy_code(self) -> None:
        copy_code_block(self)

    @property
    def explorer(self) -> TokenExplorer:
        return self.query_one("#token-explorer", TokenExplorer)

    def action_tokens(self) -> None:
        """Colour the last answer's tokens by probability and move the focus to them."""
        self.explorer.action_colours()
        self.explorer.focus()

    def action_new_chat(self) -> None:
        if self.busy:
            self.notify("An answer is running: Esc to stop it first", severity="warning")
            return
        self.query_one("#messages", VerticalScroll).remove_children()
        self.explorer.clear()
        self.exchanges = []
        self.reset_pending = self.session is not None
        self.saved.forget()
        self.turns = 0
        self.can_regenerate = False
        self.answer = None
        self.engine_error = ""
        self.refresh_controls()
        self.notify("New conversation")
        self.query_one("#prompt", Composer).focus()

    @staticmethod
    def parse_system(text: str) -> Optional[str]:
        """The system prompt field (empty: none), within ChatConfig.system's declared bound."""
        return parse_field(text, ChatConfig, "system")

    def apply_system(self) -> None:
        inp = self.query_one("#system", Input)
        try:
            system = self.parse_system(inp.value)
        except InputError as e:
            self.engine_error = str(e)
            self.refresh_controls()
            return
        if self.busy:
            self.notify("An answer is running: Esc to stop it first", severity="warning")
            return
        app = self.tokenforge_app
        app.settings.system_prompt = self._system_shown = system or ""
        self.action_new_chat()

    def action_export(self) -> None:
        from app.chat_export import export_conversation

        app = self.tokenforge_app
        if self.busy:
            self.notify("Wait for the answer to finish (or Esc) before exporting", severity="warning")
            return
        if self.session is None or not getattr(self.session, "turns", None):
            self.notify("Nothing to export yet", severity="warning")
            return
        try:
            md, js = export_conversation(self.session, app.settings.export_dir)
        except OSError as e:
            notice(self, f"export failed: {e}", severity="error")
            return
        self.last_export = [md, js]
        notice(self, f"Exported to {md} and {js.name}", title="export", timeout=8)
        self.query_one("#chat-status", Static).update(inert_text(f"exported → {md} · {js}"))

    # -- job messages -------------------------------------------------------------------------
    async def tokens_generated(self, m: TokensGenerated) -> None:
        if self.answer is None:
            return
        messages = self.query_one("#messages", VerticalScroll)
        follow = messages.scroll_y >= messages.max_scroll_y - 2
        await self.answer.append(m.text)
        self.explorer.streamed(m.text, m.n_total)
        if follow:
            messages.scroll_end(animate=False)

    async def _settled(self) -> None:
        """The new exchange is in the conversation: the ones it replaced on screen go."""
        for w in (w for pair in self.hidden for w in pair):
            await w.remove()
        self.hidden = []

    async def job_finished(self, m: JobFinished) -> None:
        r = m.result
        if getattr(r, "discarded", False):  # the engine stopped it before its first token
            await self.job_cancelled(JobCancelled(m.job_id, m.kind, "user", r, m.elapsed))
            return
        self.turns += 1
        self.tokenforge_app.record_speed(r.decode_tok_s, r.new_tokens)
        self.can_regenerate = True
        await self._settled()
        self.explorer.answer_done(self.session)
        if self.answer is not None:
            await self.answer.finish(r.text, answer_figures(r) + self._variant_note())
        self.mark_dropped(getattr(r, "dropped_turns", 0))
        if getattr(r, "notes", None):
            self.query_one("#chat-status", Static).update(inert_text(" · ".join(r.notes), "yellow"))
        self._done()

    async def job_cancelled(self, m: JobCancelled) -> None:
        r = m.partial
        if r is not None and getattr(r, "discarded", False):
            await self._take_back("Stopped before the answer began: the message was not added"
                                  " (it is back in the box)" if self.op == "send" else
                                  "Stopped before the answer began: nothing was added")
        elif self.answer is not None:
            if r is not None:
                self.turns += 1
                self.can_regenerate = True
                await self._settled()
                self.explorer.answer_done(self.session)
                await self.answer.finish(r.text, answer_figures(r, stopped=True)
                                         + self._variant_note() + f" · [yellow]{m.reason}[/]")
            else:
                await self._take_back(f"stopped ({m.reason}): nothing was added")
        self._done()

    async def job_failed(self, m: JobFailed) -> None:
        await self._take_back(m.message + (f" — {m.hint}" if m.hint else ""))
        self._done()

    def _done(self) -> None:
        self.answer = None
        self.op = ""
        self.explorer.streaming_ended()
        messages = self.query_one("#messages", VerticalScroll)
        if messages.scroll_y >= messages.max_scroll_y - 4:
            messages.scroll_end(animate=False)
        self.refresh_controls()
        self.query_one("#prompt", Composer).focus()

    def job_started(self, m: JobStarted) -> None:
        self.refresh_controls()
