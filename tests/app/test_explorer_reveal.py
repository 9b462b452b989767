"""Issue 22: rows the token explorer adds below the fold (the logit lens, then the prompt's
tokens after ~30 lens rows) are scrolled into view, at 80×24 where the explorer has ten rows."""
from __future__ import annotations

from app.engines import Engine
from app.messages import JobFinished
from app.widgets.composer import Composer
from app.widgets.token_explorer import TokenExplorer
from engine.lm.config import SamplingConfig

from app_fakes import until
from test_layout_sizes import screen_text


def _drawn(app, widget) -> bool:
    """Some of the widget's rows are on screen (inside the explorer's scrolled view)."""
    try:
        geo = app.screen.find_widget(widget)
    except Exception:  # noqa: BLE001 - NoWidget: scrolled out of the visible map
        return False
    return geo.visible_region.height > 0


async def test_lens_then_prompt_rows_are_scrolled_into_view(make_app, tiny_lm):
    app = make_app(engine=Engine(lm=tiny_lm))
    app.settings.set_sampling_by_user(SamplingConfig(max_new_tokens=12, temperature=0.0))
    seen = []
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        screen = app.screen
        prompt = screen.query_one("#prompt", Composer)
        prompt.focus()
        prompt.value = "Hello, who are you?"
        await pilot.press("enter")
        await until(pilot, lambda: any(isinstance(m, JobFinished) and m.kind == "chat"
                                       for m in seen), 30)
        ex = screen.query_one(TokenExplorer)
        await until(pilot, lambda: ex.current is not None and not app.runner.busy)
        await pilot.press("ctrl+t")
        assert ex.has_focus
        await pilot.press("l")
        lens = ex.query_one("#tx-lens")
        await until(pilot, lambda: "L2" in ex.lens_text and not app.runner.busy)
        await until(pilot, lambda: _drawn(app, lens)
                    and any("logit lens" in r for r in screen_text(app)))
        await pilot.press("p")
        block = ex.query_one("#tx-prompt")
        await until(pilot, lambda: "prompt tokens" in ex.prompt_text and not app.runner.busy)
        # the new rows' first line is on screen, inside the explorer's view
        await until(pilot, lambda: _drawn(app, block)
                    and any("prompt tokens" in r for r in screen_text(app)))
        assert ex.scroll_y > 0  # it did scroll: these rows start below the explorer's first view
        assert block.region.y >= ex.region.y
