"""Starting an answer on the chat screen, whatever makes it — a new message, a regenerate
(ctrl+r, at the token explorer's turn), a forced token (the explorer's Enter), an edited
message — and moving between the variants of a turn (the explorer's [ / ]). Every one is an
exchange of the session's variants tree (engine.lm.chat), started by one method and streamed
into the transcript as this screen's job. A mixin of ``ChatScreen``."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from textual.containers import VerticalScroll

from engine.errors import InputError

from app.inert import notice
from app.screens.chat_transcript import render_path, variant_label
from app.widgets.chat_messages import AssistantMessage, UserMessage

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


class ChatVariants:
    session: Any
    exchanges: list
    hidden: list
    answer: Any
    op: str

    async def _start_exchange(self, how: str, k: int, text: str, *args: Any) -> None:
        """The one way an answer is started on screen, whatever made it (a new message, a
        regenerate, a forced token, an edited message): the exchanges from live turn ``k`` on are
        hidden (they come back if this one never begins), a user message and a streaming answer
        are added, and the engine call runs as this screen's job (Esc stops it, its progress and
        figures are shown, the token explorer follows the stream)."""
        app = self.tokenforge_app
        self.engine_error = ""
        self.can_regenerate = False
        self.op = how
        messages = self.query_one("#messages", VerticalScroll)
        self.hidden = self.exchanges[k:]
        for w in (w for pair in self.hidden for w in pair):
            w.display = False
        user = UserMessage(text, classes="user-message", markup=False)
        await messages.mount(user)
        self.answer = AssistantMessage(classes="assistant-message")
        await messages.mount(self.answer)
        self.exchanges = self.exchanges[:k] + [(user, self.answer)]
        messages.scroll_end(animate=False)
        self.explorer.streaming_started(how)
        sampling = app.settings.sampling
        path_k = k + self.n_dropped
        self.start_job("chat", self._exchange, how, path_k, text, args, sampling, app.engine,
                       app.lm, app.settings.system_prompt or None, stream=True,
                       params={"chars": len(text), "how": how,
                               "max_new_tokens": sampling.max_new_tokens})
        self.refresh_controls()

    @property
    def n_dropped(self) -> int:
        return len(getattr(self.session, "dropped", []) or [])

    def _exchange(self, how: str, k: int, text: str, args: tuple, sampling: Any, engine: Any,
                  lm: LoadedModel, system: Optional[str], *, on_token: Any, progress: Any,
                  cancel: Any) -> Any:
        """Worker thread (everything it needs is passed in; only one chat job runs at a time, so
        the session is ours). A new message may first make or reset the session; the session's
        listener saves the exchange as it happens (app/saved_chat.py)."""
        kw = dict(on_token=on_token, progress=progress, cancel=cancel)
        if how == "send":
            if self.session is None or self.session_lm is not lm:
                self.session = engine.new_chat(lm, system)
                self.session_lm = lm
                self.reset_pending = False
                self.saved.attach(self.tokenforge_app, self.session)
            elif self.reset_pending:
                self.session.reset(system=system)
                self.reset_pending = False
            return engine.chat_send(self.session, text, sampling, **kw)
        if how == "regenerate":
            last = k == len(self.session.turns) + self.n_dropped - 1
            return engine.chat_regenerate(self.session, sampling, turn=None if last else k, **kw)
        self.session.sampling = sampling
        if how == "force":
            return self.session.force(k, *args, sampling=sampling, **kw)
        return self.session.edit(k, text, sampling=sampling, **kw)

    def selected_turn(self) -> int:
        """The live turn the token explorer shows (ctrl+r and force act on it), else the last."""
        node = self.explorer.node_on_path()
        live = len(self.exchanges) - 1
        if node is None:
            return live
        return max(0, min(live, node - self.n_dropped))

    async def action_regenerate(self) -> None:
        """A new answer to the selected turn's message (the token explorer's turn, by default
        the last), streamed like any answer; the old one stays as a variant ([ / ])."""
        app = self.tokenforge_app
        if self.busy:
            self.notify("An answer is running: Esc to stop it first", severity="warning")
            return
        if app.lm is None or app.model_state != "ready":
            self.notify("No model loaded yet", severity="warning")
            return
        if (not self.can_regenerate or self.session is None or self.reset_pending
                or not getattr(self.session, "turns", None) or not self.exchanges):
            self.notify("Nothing to regenerate: the last message has no answer in this "
                        "conversation", severity="warning")
            return
        k = self.selected_turn()
        user = self.exchanges[k][0]
        self.last_prompt = user.raw
        await self._start_exchange("regenerate", k, self.last_prompt)

    async def start_force(self, path_index: int, position: int, token: int) -> None:
        """The token explorer's Enter: put ``token`` at ``position`` of that turn's answer and
        continue from there, streamed as a new variant of the turn."""
        k = path_index - self.n_dropped
        if self.busy or not 0 <= k < len(self.exchanges):
            if self.busy:
                self.notify("An answer is running: Esc to stop it first", severity="warning")
            else:
                self.notify("That turn was dropped from the model's context: it cannot branch",
                            severity="warning")
            return
        await self._start_exchange("force", k, self.exchanges[k][0].raw, position, token)

    async def start_edit(self, path_index: int, text: str) -> None:
        """An edited message in place of that turn's: a new variant of the turn."""
        k = path_index - self.n_dropped
        if self.busy or not 0 <= k < len(self.exchanges):
            return
        await self._start_exchange("edit", k, text)

    async def show_variant(self, node: int) -> None:
        """Make the path through ``node`` the conversation (the explorer's [ / ]): the
        transcript shows it, the next message continues it, the saved session's head follows."""
        if self.busy or self.session is None:
            return
        try:
            self.session.show(node)
        except InputError as e:
            notice(self, e, severity="warning")
            return
        await render_path(self)
        self.explorer.show_node(self.session, node)

    def _variant_note(self) -> str:
        """What made this answer, and where it is among its turn's variants."""
        how = {"regenerate": " · regenerated", "force": " · forced", "edit": " · edited"}.get(self.op, "")
        return how + variant_label(self.session)

