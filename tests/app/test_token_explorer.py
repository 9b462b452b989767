"""The chat's token explorer on the tiny model, keys and mouse: colours, token selection,
alternatives, force-and-branch, variant navigation, regenerate as a sibling, logit lens and the
prompt's surprisal — checked against the engine's own state."""
from __future__ import annotations

from rich.cells import cell_len

from app.engines import Engine
from app.messages import JobFinished, TokensGenerated
from engine.lm.config import SamplingConfig
from app.widgets.chat_messages import AssistantMessage
from app.widgets.composer import Composer
from app.widgets.token_explorer import TokenExplorer, show_piece

from app_fakes import until


async def test_token_selection_branching_and_navigation(make_app, tiny_lm):
    app = make_app(engine=Engine(lm=tiny_lm))
    app.settings.set_sampling_by_user(SamplingConfig(max_new_tokens=12, temperature=0.0))  # the user's: model defaults leave it
    seen = []
    async with app.run_test(size=(220, 50), message_hook=seen.append) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        screen = app.screen
        prompt = screen.query_one("#prompt", Composer)
        prompt.focus()
        prompt.value = "Hello, who are you?"
        await pilot.press("enter")
        await until(pilot, lambda: any(isinstance(m, JobFinished) and m.kind == "chat"
                                       for m in seen), 30)
        ex = screen.query_one(TokenExplorer)
        await until(pilot, lambda: ex.current is not None)
        root = ex.current
        assert root.answer_ids == screen.session.turns[-1].answer_ids and len(root.infos) >= 6

        # ctrl+t: colours on, focus on the tokens; arrows select
        await pilot.press("ctrl+t")
        assert ex.colour and ex.has_focus
        await pilot.press("right", "right")
        assert ex.sel == 2
        detail = str(ex.query_one("#tx-detail").render())
        assert f"id {root.infos[2].id}" in detail and "entropy" in detail
        await pilot.press("left")
        assert ex.sel == 1

        # a click on token 4 selects it (offset = cells of the tokens before it)
        x = sum(cell_len(show_piece(i.text)) for i in root.infos[:4])
        await pilot.click("#tx-tokens", offset=(x, 0))
        assert ex.sel == 4

        # ↓ + enter: force the second alternative there and continue — streamed into the
        # transcript as the chat screen's own job, with its figures line
        await pilot.press("down")
        assert ex.alt == 1
        alt = root.infos[4].alternatives[1].id
        n_chat = sum(isinstance(m, JobFinished) and m.kind == "chat" for m in seen)
        await pilot.press("enter")
        await until(pilot, lambda: len(screen.session.nodes) == 2 and not app.runner.busy
                    and ex.node == 1)
        b = screen.session.nodes[1]
        assert b.answer_ids[4] == alt and b.answer_ids[:4] == root.answer_ids[:4]
        assert screen.session.turns[-1] is b
        assert any(isinstance(m, TokensGenerated) and m.kind == "chat" for m in seen)
        answer = screen.query(AssistantMessage).last()
        await until(pilot, lambda: answer.text == b.answer and "forced" in str(answer.figures.content))
        assert len(screen.query(AssistantMessage)) == 1
        ex.focus()
        ex.select(4)
        assert "< 2/2 >" in str(ex.query_one("#tx-head").render())

        # [ and ]: the variants at this position
        await pilot.press("left_square_bracket")
        await until(pilot, lambda: ex.node == 0 and screen.session.turns[-1] is root)
        await until(pilot, lambda: screen.query(AssistantMessage).last().text == root.answer)
        ex.select(4)
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: ex.node == 1 and screen.session.turns[-1] is b)

        # regenerate (ctrl+r) makes a sibling of the first answer, streamed the same way
        await pilot.press("ctrl+r")
        await until(pilot, lambda: len(screen.session.nodes) == 3 and not app.runner.busy
                    and ex.node == 2)
        r2 = screen.session.nodes[2]
        assert r2.source is None and r2.how == "regenerate"
        assert r2.answer_ids == root.answer_ids  # greedy: the same answer again, from the cache
        from engine.lm.branching import label
        assert label(screen.session.nodes, 2, 0) == "< 2/2 >"
        assert sum(isinstance(m, JobFinished) and m.kind == "chat" for m in seen) == n_chat + 2

        # logit lens and prompt surprisal, on demand
        ex.focus()
        await pilot.press("l")
        await until(pilot, lambda: "L2" in ex.lens_text and not app.runner.busy)
        await pilot.press("p")
        await until(pilot, lambda: "prompt tokens" in ex.prompt_text and not app.runner.busy)

        # the conversation continues from the shown branch
        prompt.focus()
        prompt.value = "And then?"
        await pilot.press("enter")
        await until(pilot, lambda: len(screen.session.turns) == 2 and not app.runner.busy)
        assert screen.session.turns[0] is r2
