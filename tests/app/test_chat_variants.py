"""Issue 22.1/22.2 on screen, with the real engine on the tiny model: a regenerate and a forced
token at a middle turn stream into the transcript as the chat screen's job (token messages, the
figures line) and are saved; after quitting, the session reopened from F7 is browsable — every
variant of every turn with [ / ] in the token explorer, the transcript following — by the same
code path as a live chat."""
from __future__ import annotations

from textual.widgets import DataTable

from app.engines import Engine
from app.messages import JobFinished, TokensGenerated
from app.widgets.chat_messages import AssistantMessage, UserMessage
from app.widgets.composer import Composer
from app.widgets.token_explorer import TokenExplorer
from engine.lm.config import SamplingConfig

from app_fakes import until

SIZE = (140, 45)
MSGS = ("Hello there", "Tell me about kittens", "And a third thing")


def _n_chat(seen):
    return sum(isinstance(m, JobFinished) and m.kind == "chat" for m in seen)


async def _say(pilot, app, seen, text):
    n = _n_chat(seen)
    box = app.screen.query_one("#prompt", Composer)
    box.focus()
    box.value = text
    await pilot.press("enter")
    await until(pilot, lambda: _n_chat(seen) > n and not app.runner.busy)


def _transcript(scr):
    return ([str(u.content) for u in scr.query(UserMessage)],
            [a.text for a in scr.query(AssistantMessage)])


def _path_text(session):
    return ([t.user for t in session.path], [t.answer for t in session.path])


async def test_variants_at_a_middle_turn_saved_and_browsable_after_reopen(make_app, tiny_lm):
    app = make_app(engine=Engine(lm=tiny_lm))
    app.settings.set_sampling_by_user(SamplingConfig(max_new_tokens=8, temperature=0.0))  # the user's: model defaults leave it
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        scr = app.screen
        for m in MSGS:
            await _say(pilot, app, seen, m)
        s = scr.session
        t0, t1, t2 = s.turns
        ex = scr.query_one(TokenExplorer)
        await pilot.press("ctrl+t")
        assert ex.has_focus and ex.node == t2.id
        await pilot.press("comma")  # the middle turn
        assert ex.node == t1.id and "turn 2/3" in str(ex.query_one("#tx-head").render())

        # ctrl+r at the middle turn: a new answer streams in as the screen's own job
        app.settings.set_sampling_by_user(SamplingConfig(max_new_tokens=8, temperature=1.5, seed=11))  # the user's: model defaults leave it
        n_tok = sum(isinstance(m, TokensGenerated) for m in seen)
        n = _n_chat(seen)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: _n_chat(seen) > n and not app.runner.busy)
        assert sum(isinstance(m, TokensGenerated) and m.kind == "chat" for m in seen) > n_tok
        regen = s.nodes[3]
        assert regen.how == "regenerate" and regen.prev == t0.id
        assert [t.id for t in s.path] == [t0.id, regen.id]
        await until(pilot, lambda: _transcript(scr) == _path_text(s))  # once the screen handled it
        last = scr.query(AssistantMessage).last()
        await until(pilot, lambda: "regenerated" in str(last.figures.content))
        assert "variant 2/2" in str(last.figures.content) and ex.node == regen.id

        # force the runner-up token at position 1 of that answer
        app.settings.set_sampling_by_user(SamplingConfig(max_new_tokens=8, temperature=0.0))  # the user's: model defaults leave it
        ex.focus()
        await pilot.press("right", "down")
        assert ex.sel == 1 and ex.alt == 1
        alt = regen.infos[1].alternatives[1].id
        n = _n_chat(seen)
        await pilot.press("enter")
        await until(pilot, lambda: _n_chat(seen) > n and not app.runner.busy)
        forced = s.nodes[4]
        assert forced.how == "force" and forced.answer_ids[1] == alt and forced.source == regen.id
        assert [t.id for t in s.path] == [t0.id, forced.id]
        await until(pilot, lambda: _transcript(scr) == _path_text(s))
        name = scr.saved.name
        shapes = [(t.user, t.answer, t.how, t.prev, t.source, t.fork_at) for t in s.nodes]
        app.exit()  # Ctrl+Q

    # a new process: open it from F7, then browse every variant
    app = make_app(engine=Engine(lm=tiny_lm))
    app.settings.set_sampling_by_user(SamplingConfig(max_new_tokens=8, temperature=0.0))  # the user's: model defaults leave it
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        await pilot.press("f7")
        await until(pilot, lambda: app.current_mode == "sessions")
        table = app.screen.query_one("#session-table", DataTable)
        await until(pilot, lambda: name in app.screen.names)
        table.move_cursor(row=app.screen.names.index(name))
        await pilot.press("enter")
        await until(pilot, lambda: app.current_mode == "chat")
        scr = app.screen
        await until(pilot, lambda: scr.session is not None and len(scr.session.nodes) == 5)
        s = scr.session
        assert [(t.user, t.answer, t.how, t.prev, t.source, t.fork_at) for t in s.nodes] == shapes
        assert [t.id for t in s.path] == [0, 4]
        await until(pilot, lambda: _transcript(scr) == _path_text(s))
        ex = scr.query_one(TokenExplorer)
        await until(pilot, lambda: ex.node == 4)  # shown once the transcript is drawn
        assert ex.current.infos and ex.current.infos[1].forced

        ex.focus()
        ex.select(1)  # the forced position: [ goes back to the regenerated answer
        await pilot.press("left_square_bracket")
        await until(pilot, lambda: ex.node == 3 and [t.id for t in s.path] == [0, 3])
        await until(pilot, lambda: _transcript(scr) == _path_text(s))
        ex.select(0)  # the turn's variants: the first answer, with its third turn after it
        await pilot.press("left_square_bracket")
        await until(pilot, lambda: ex.node == 1 and [t.id for t in s.path] == [0, 1, 2])
        await until(pilot, lambda: _transcript(scr) == _path_text(s))
        assert _transcript(scr)[1] == [shapes[i][1] for i in (0, 1, 2)]
        await pilot.press("full_stop")  # the third turn has no other variant
        assert ex.node == 2 and "variants here" not in str(ex.query_one("#tx-head").render())
        await pilot.press("comma", "comma")  # the first turn: only one answer
        assert ex.node == 0
        # back to the forced one, and the conversation continues from it, saved
        await pilot.press("full_stop")
        ex.select(0)
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: ex.node == 3)
        ex.select(1)
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: ex.node == 4 and [t.id for t in s.path] == [0, 4])
        box = scr.query_one("#prompt", Composer)
        box.focus()
        box.value = "Go on"
        await pilot.press("enter")
        await until(pilot, lambda: len(s.path) == 3 and not app.runner.busy)
        from app.saved_chat import session_store

        saved = session_store(app).get(name)
        assert [t.answer for t in saved.turns][:2] == [shapes[0][1], shapes[4][1]]
        assert [t.user for t in saved.turns] == ["Hello there", "Tell me about kittens", "Go on"]


async def test_select_a_message_to_copy_it_and_edit_a_message(make_app, tiny_lm):
    """Any message can be copied (select it: tab or a click), selecting an answer shows its turn
    in the token explorer, and e on a user message edits it: the answer to the edited message
    streams in as a new variant of that turn, the old exchange kept."""
    app = make_app(engine=Engine(lm=tiny_lm))
    app.settings.set_sampling_by_user(SamplingConfig(max_new_tokens=6, temperature=0.0))
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        scr = app.screen
        for m in MSGS[:2]:
            await _say(pilot, app, seen, m)
        s = scr.session
        await until(pilot, lambda: _transcript(scr) == _path_text(s))
        users, answers = list(scr.query(UserMessage)), list(scr.query(AssistantMessage))
        ex = scr.query_one(TokenExplorer)
        users[0].focus()
        await pilot.press("alt+c")
        assert app.clipboard == "Hello there"
        answers[0].focus()
        await pilot.pause()
        assert ex.node == s.path[0].id  # the selected answer's turn
        await pilot.press("alt+c")
        assert app.clipboard == s.path[0].answer and app.clipboard
        scr.query_one("#prompt", Composer).focus()
        await pilot.press("alt+c")  # nothing selected: the last answer
        assert app.clipboard == s.path[1].answer

        users[0].focus()
        await pilot.press("e")
        box = scr.query_one("#prompt", Composer)
        assert box.has_focus and box.value == "Hello there" and scr.editing == 0
        assert "editing turn 1" in str(scr.query_one("#chat-status").render())
        box.value = "Hello again"
        n = _n_chat(seen)
        await pilot.press("enter")
        await until(pilot, lambda: _n_chat(seen) > n and not app.runner.busy)
        edited = s.nodes[-1]
        assert edited.how == "edit" and edited.user == "Hello again" and edited.prev is None
        assert [t.id for t in s.path] == [edited.id] and len(s.nodes) == 3
        await until(pilot, lambda: _transcript(scr) == _path_text(s))
        assert "edited" in str(scr.query(AssistantMessage).last().figures.content)
        # the first exchange is still there, as the other variant of turn 1
        ex.focus()
        ex.select(0)
        await pilot.press("left_square_bracket")
        await until(pilot, lambda: [t.user for t in s.path] == list(MSGS[:2]))
        await until(pilot, lambda: _transcript(scr) == _path_text(s))


async def _open_from_f7(pilot, app, name):
    await pilot.press("f7")
    await until(pilot, lambda: app.current_mode == "sessions")
    scr = app.screen
    await until(pilot, lambda: name in scr.names)
    scr.query_one("#session-table", DataTable).move_cursor(row=scr.names.index(name))
    await pilot.press("enter")
    return scr


async def test_a_session_whose_model_is_not_loaded_offers_both(make_app, tokenizer):
    """Opened with another model loaded, a session says so and offers its own model (l) or the
    loaded one (o, history re-encoded from text); each step of opening shows on the progress
    bar."""
    from app.messages import JobProgressed
    from engine.lm.tiny import tiny_llama

    own, other = tiny_llama(tokenizer, seed=0), tiny_llama(tokenizer, seed=1)
    own.name = own.spec = "tiny-own"
    other.name = other.spec = "tiny-other"

    class TwoModels(Engine):
        def load_model(self, spec, *a, **kw):
            self.injected = own if spec == "tiny-own" else other
            return super().load_model(spec, *a, **kw)

    app = make_app(engine=Engine(lm=own))
    app.settings.set_sampling_by_user(SamplingConfig(max_new_tokens=4, temperature=0.0))
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        await _say(pilot, app, seen, "Hello there")
        name = app.screen.saved.name

    for key, how in (("o", "re-encoded"), ("l", "snapshot")):
        app = make_app(engine=TwoModels())
        app.settings.model = "tiny-other"
        app.settings.set_sampling_by_user(SamplingConfig(max_new_tokens=4, temperature=0.0))
        seen = []
        async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
            await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
            assert app.lm is other
            scr = await _open_from_f7(pilot, app, name)
            status = scr.query_one("#sessions-status")
            await until(pilot, lambda: "not with the loaded tiny-other" in str(status.render()))
            assert "l: load tiny-own" in str(status.render()) and app.current_mode == "sessions"
            await pilot.press(key)
            await until(pilot, lambda: app.current_mode == "chat" and app.screen.session is not None
                        and app.screen.session.path)
            chat = app.screen
            # the "session opened" toast (the status line says it too, until the controls next
            # refresh, which may come first)
            await until(pilot, lambda: any(how in t for t in app.toasts))
            assert app.lm is (other if key == "o" else own)
            assert [t.user for t in chat.session.path] == ["Hello there"]
            opening = [m.progress.message for m in seen if isinstance(m, JobProgressed)
                       and m.progress.phase == "open"]
            # reports are throttled (≤ 20/s): the first step and the last are always shown
            assert len(opening) >= 2 and opening[-1].startswith("opened")
