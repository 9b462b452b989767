"""Derived timeouts: floor and cap, the derivation shown in settings, per-kind user values kept
when the speed or max new tokens change, and Re-derive."""
from __future__ import annotations

from textual.widgets import Button, Input

from app.settings import (CAP_S, FLOOR_S, AppSettings, derive_timeout_details, derive_timeouts)

from app_fakes import FakeEngine, until

SIZE = (140, 60)


def test_derived_timeouts_are_held_between_floor_and_cap():
    for tok_s in (None, 1e-3, 0.5, 2.0, 50.0, 1e6, float("nan"), float("inf"), -3.0):
        for max_new in (1, 256, 4096):
            t = derive_timeouts(tok_s, max_new)
            for kind in ("chat", "advtok", "tree", "bench"):
                assert FLOOR_S <= t[kind] <= CAP_S, (tok_s, max_new, kind)
    d = derive_timeout_details(50.0, 256)
    # chat: 256 tok ÷ 50 tok/s × 3 = 15.4 s → floor; tree: 15,360 ÷ 50 × 3 = 921.6 → 930 s
    assert d["chat"].seconds == FLOOR_S and d["chat"].limit == "floor"
    assert d["tree"].seconds == 930.0 and d["tree"].limit == "" and d["tree"].budget_tokens == 15360
    assert d["bench"].seconds == CAP_S and d["bench"].limit == "cap"
    assert "51,200 tokens ÷ 50.0 tok/s measured × 3 margin = 51.2 min → cap 30 min" \
        in d["bench"].explain()
    unknown = derive_timeout_details(None, 256)["chat"]
    assert not unknown.measured and unknown.tok_s == 2.0 and unknown.seconds == 390.0
    assert "assumed" in unknown.explain()
    assert derive_timeouts(50.0, 256)["load"] is None


def test_user_timeouts_survive_rederivation():
    s = AppSettings()
    s.set_user_timeout("chat", 45.0)
    s.apply_speed(50.0, source="first answer")
    assert s.timeouts["chat"] == 45.0 and s.timeouts["tree"] == 930.0
    s.sampling.max_new_tokens = 512
    s.rederive()
    assert s.timeouts["chat"] == 45.0 and s.timeouts["tree"] == CAP_S  # 1843 s → cap
    s.timeouts_user_set = False
    s.rederive()
    assert s.timeouts["chat"] == 40.0  # 512 ÷ 50 × 3 = 30.7 → 40 s


async def test_settings_show_the_derivation_and_keep_edits(make_app):
    app = make_app(engine=FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.settings.measured_tok_s == 50.0 and not app.runner.busy)
        await pilot.press("f6")
        await until(pilot, lambda: app.current_mode == "settings")
        scr = app.screen
        why = lambda k: str(scr.query_one(f"#why-{k}").content)  # noqa: E731
        note = str(scr.query_one("#timeouts-note").content)
        assert "measured 50.0 tok/s (speed probe)" in note and "30 s … 30 min" in note
        assert "256 tokens ÷ 50.0 tok/s measured × 3 margin = 15 s → floor 30 s" in why("chat")
        assert "→ cap 30 min" in why("bench") and "fixed" in why("vocab")
        assert scr.query_one("#timeout-tree", Input).value == "930"
        # edit one timeout and max new tokens: the edit is kept, the others re-derive
        scr.query_one("#timeout-chat", Input).value = "45"
        scr.query_one("#set-max-new", Input).value = "512"
        await pilot.pause(0.02)
        scr.query_one("#apply", Button).press()
        await pilot.pause(0.05)
        assert app.runner.timeout_for("chat") == 45.0
        assert app.runner.timeout_for("tree") == CAP_S and app.runner.timeout_for("advtok") == 1230.0
        assert scr.query_one("#timeout-advtok", Input).value == "1230"
        assert "set by you" in why("chat") and "derived would be 40 s" in why("chat")
        assert "set by you" not in why("tree")
        scr.query_one("#derive", Button).press()
        await pilot.pause(0.05)
        assert app.runner.timeout_for("chat") == 40.0 and app.settings.user_timeouts == set()
        assert scr.query_one("#timeout-chat", Input).value == "40"
        assert "set by you" not in why("chat")
