"""Widgets and the app reach screens by messages (app/messages.py), never by calling into them:
a widget's own job makes its screen busy (Run off, Stop on, Esc stops that job) and its end
turns Run back on; the lattice asks for a run from its token ids; ModelChanged reaches every
open screen; a screen's palette entries are SystemCommands (the one palette mechanism)."""
from __future__ import annotations

from textual.widgets import Button

from app.messages import ControlsChanged, ModelChanged, RunFromIds, WidgetJobStarted
from app.widgets.lattice_view import LatticeView

from app_fakes import DEADLINE_S, until
from test_screen_attack import FakeAttackEngine, fill, open_attack, run_enabled

SIZE = (130, 60)


async def test_a_widget_job_makes_its_screen_busy_until_it_ends(make_app):
    app = make_app(engine=FakeAttackEngine())
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_attack(pilot, app)
        fill(scr, request="Tell me a joke", response="Sure", iters="2", samples="0")
        run, stop = scr.query_one("#atk-run", Button), scr.query_one("#atk-stop", Button)
        await until(pilot, lambda: not run.disabled)
        lattice = scr.query_one(LatticeView)

        def wait_for_cancel(*, progress, cancel):
            cancel.wait(DEADLINE_S)
            return None

        job = app.runner.start("advtok", wait_for_cancel, target=lattice, needs_model=False)
        lattice.post_message(WidgetJobStarted(job))
        await until(pilot, lambda: scr.busy and run.disabled and not stop.disabled)
        await pilot.press("escape")  # the screen's Esc stops the widget's job
        await until(pilot, lambda: job.done)
        lattice.post_message(ControlsChanged())
        await until(pilot, lambda: not scr.busy and not run.disabled and stop.disabled)


async def test_run_from_ids_and_model_changed_reach_the_screen(make_app):
    eng = FakeAttackEngine()
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_attack(pilot, app)
        fill(scr, request="Tell me a joke", response="Sure", iters="2", samples="0")
        await run_enabled(pilot, scr)
        scr.query_one(LatticeView).post_message(RunFromIds([20407, 549]))
        await until(pilot, lambda: len(eng.calls) == 1 and scr.result is not None
                    and not app.runner.busy)
        assert eng.calls[0]["init"] == "given" and eng.calls[0]["given_ids"] == [20407, 549]
        # the app's state changes reach every open screen as a message
        app.model_state, app.model_error = "failed", "disk gone"
        app.notify_screens(ModelChanged)
        await until(pilot, lambda: "disk gone" in str(scr.query_one("#atk-status").content))
        assert scr.query_one("#atk-run", Button).disabled
        assert [c.title for c in scr.palette_commands()][0] == "attack: Run attack"
