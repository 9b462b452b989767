"""The chat's token explorer on the tiny model, keys and mouse: colours, token selection,
alternatives, force-and-branch, variant navigation, regenerate as a sibling, logit lens and the
prompt's surprisal — checked against the engine's own state."""
from __future__ import annotations

from rich.cells import cell_len

from app.engines import Engine
from app.messages import JobFinished
from engine.lm.config import SamplingConfig
from app.widgets.chat_messages import AssistantMessage
from app.widgets.composer import Composer
from app.widgets.token_explorer import TokenExplorer, show_piece

from app_fakes import until


async def test_token_selection_branching_and_navigation(make_app, tiny_lm):
    app = make_app(engine=Engine(lm=tiny_lm))
    app.settings.sampling = SamplingConfig(max_new_tokens=12, temperature=0.0)
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
        await until(pilot, lambda: ex.answers is not None)
        root = ex.answers.branches[0]
        assert root.token_ids == screen.session.turns[-1].answer_ids and len(root.infos) >= 6

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

        # ↓ + enter: force the second alternative there and continue
        await pilot.press("down")
        assert ex.alt == 1
        alt = root.infos[4].alternatives[1].id
        await pilot.press("enter")
        await until(pilot, lambda: len(ex.answers.branches) == 2 and not app.runner.busy)
        b = ex.answers.branches[1]
        assert ex.branch == 1 and b.token_ids[4] == alt and b.token_ids[:4] == root.token_ids[:4]
        assert screen.session.turns[-1].answer_ids == b.token_ids
        answer = screen.query(AssistantMessage).last()
        await until(pilot, lambda: answer.text == b.text)
        assert "< 2/2 >" in str(ex.query_one("#tx-head").render())

        # [ and ]: the variants at this position
        await pilot.press("left_square_bracket")
        assert ex.branch == 0 and screen.session.turns[-1].answer_ids == root.token_ids
        await until(pilot, lambda: answer.text == root.text)
        await pilot.press("right_square_bracket")
        assert ex.branch == 1

        # regenerate (ctrl+r) makes a sibling of the first answer
        await pilot.press("ctrl+r")
        await until(pilot, lambda: len(ex.answers.branches) == 3 and not app.runner.busy)
        r2 = ex.answers.branches[2]
        assert r2.parent is None and ex.branch == 2
        assert r2.token_ids == root.token_ids  # greedy: the same answer again, from the cache
        assert ex.answers.label(2, 0) == "< 2/2 >"

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
        assert screen.session.turns[0].answer_ids == r2.token_ids
