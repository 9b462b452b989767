"""A job whose token budget cannot finish inside its timeout at the measured speed says so
before it starts (and still runs: the timeout stops it with the best so far)."""
from __future__ import annotations

from textual.widgets import Input

from app.settings import over_timeout
from app_fakes import until
from test_screen_search import FakeTreeEngine, open_search

SIZE = (140, 48)


def test_over_timeout_only_when_the_measured_speed_cannot_make_it():
    assert over_timeout("x", 100, 10.0, 30.0) is None             # 10 s < 30 s
    msg = over_timeout("this tree search", 5100, 10.0, 60.0)      # 510 s > 60 s
    assert "5,100 tokens" in msg and "8.5 min" in msg and "60 s timeout" in msg
    assert over_timeout("x", 10**6, None, 60.0) is None            # nothing measured yet
    assert over_timeout("x", 10**6, 10.0, None) is None            # no limit


async def test_search_screen_warns_before_a_search_that_cannot_finish(make_app):
    eng = FakeTreeEngine()
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_search(pilot, app)
        app.settings.measured_tok_s = 10.0
        app.settings.set_user_timeout("tree", 60.0)
        for k, v in {"prompt": "Write about the sky", "reward": "words:moon", "rollouts": "100",
                     "horizon": "50"}.items():
            scr.query_one(f"#ts-{k}", Input).value = v
        await until(pilot, lambda: not scr.query_one("#ts-run").disabled)
        assert app.runner.timeout_for("tree") == 60.0
        await pilot.press("ctrl+r")
        await until(pilot, lambda: any("stop early" in m for m in app.toasts))
        msg = next(m for m in app.toasts if "stop early" in m)
        assert "5,050 tokens" in msg and "at the measured 10.0 tok/s" in msg
        await until(pilot, lambda: eng.calls)           # it still runs
