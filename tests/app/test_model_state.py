"""Issue 16.4/16.5/16.10: a failed reload keeps the working model (reason shown, chat still
works); the speed probe waits for the start-up vocabulary; timeouts follow the running median
of real answers; every job failure is in the TUI log with its traceback."""
from __future__ import annotations

import logging

import pytest
from textual.widgets import Button, Input

from engine.errors import ModelNotFound

from app.widgets.composer import Composer

from app_fakes import FakeEngine, until


async def _ready(pilot, app):
    await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)


async def _send(pilot, app, text):
    box = app.screen.query_one("#prompt", Composer)
    box.focus()
    box.value = text
    await pilot.press("enter")


@pytest.mark.parametrize("size", [(140, 45), (80, 24)])
async def test_failed_reload_keeps_the_working_model(make_app, size):
    eng = FakeEngine()
    app = make_app(engine=eng)
    async with app.run_test(size=size) as pilot:
        await _ready(pilot, app)
        first = app.lm
        await pilot.press("f6")
        await until(pilot, lambda: app.current_mode == "settings")
        eng.load_error = ModelNotFound("no model at /nowhere")
        app.screen.query_one("#set-model", Input).value = "/nowhere"
        app.screen.query_one("#reload", Button).press()
        await until(pilot, lambda: app.model_error and not app.runner.busy)
        assert app.lm is first and app.model_state == "ready"
        assert app.sub_title == first.describe()
        assert any("Kept fake-lm" in m for m in app.toasts)
        await pilot.press("f2")
        await until(pilot, lambda: app.current_mode == "chat")
        status = str(app.screen.query_one("#chat-status").content)
        assert "no model at /nowhere" in status and "still using" in status
        await _send(pilot, app, "still there?")
        await until(pilot, lambda: not app.runner.busy and eng.sent == ["still there?"])


class VocabEngine(FakeEngine):
    """A vocabulary build that takes a while; records when the probe ran."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.events: list[str] = []
        self.speeds = iter([50.0])

    def vocab_available(self):
        return True

    def load_vocab(self, lm, *, progress=None, cancel=None):
        self.events.append("vocab start")
        cancel.wait(0.3)
        self.events.append("vocab end")
        return object()

    def measure_speed(self, lm, *, progress=None, cancel=None):
        self.events.append("probe")
        return super().measure_speed(lm, progress=progress, cancel=cancel)


async def test_probe_runs_after_the_vocabulary(make_app):
    eng = VocabEngine()
    app = make_app(engine=eng)
    async with app.run_test(size=(140, 45)) as pilot:
        await until(pilot, lambda: "probe" in eng.events and not app.runner.busy
                    and app.settings.measured_tok_s is not None)
        assert eng.events == ["vocab start", "vocab end", "probe"]
        assert app.settings.measured_tok_s == 50.0 and app.vocab_state == "ready"


async def test_timeouts_follow_the_running_median(make_app):
    app = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await _ready(pilot, app)
        s = app.settings
        # the probe's result arrives with its JobFinished, a moment after the runner is idle
        await until(pilot, lambda: s.speed_samples == [50.0])
        chat50 = s.timeouts["chat"]
        for tok_s in (10.0, 12.0, 11.0):  # the machine is slower than the probe said
            app.record_speed(tok_s, 64)
        assert s.measured_tok_s == pytest.approx(11.5)  # median of 50, 10, 12, 11
        assert "median of 4" in s.speed_source
        from app.settings import derive_timeouts

        want = derive_timeouts(11.5, s.sampling.max_new_tokens, s.bench_grid)["chat"]
        assert s.timeouts["chat"] == want > chat50  # derived from the median: longer
        app.record_speed(5.0, 3)  # a 3-token answer is noise: ignored
        assert len(s.speed_samples) == 4


async def test_every_job_failure_is_logged_bugs_with_their_traceback(make_app, caplog):
    from engine.errors import InputError

    eng = FakeEngine(fail=InputError("too long", hint="shorten it"))
    app = make_app(engine=eng)
    caplog.set_level(logging.INFO, logger="tokenforge.runner")
    async with app.run_test(size=(140, 45)) as pilot:
        await _ready(pilot, app)
        await _send(pilot, app, "boom")
        await until(pilot, lambda: not app.runner.busy and eng.sent)
        eng.fail = RuntimeError("a bug")
        await _send(pilot, app, "boom again")
        await until(pilot, lambda: not app.runner.busy and len(eng.sent) == 2)
    # an ordinary input error is one line; a bug is logged as a failure with its traceback
    said = [r for r in caplog.records if "too long" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert "Traceback" not in said[0].getMessage() and "\n" not in said[0].getMessage()
    bugs = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(bugs) == 1 and bugs[0].levelno == logging.ERROR
    assert "RuntimeError: a bug" in bugs[0].getMessage()
    assert "Traceback (most recent call last)" in bugs[0].getMessage()
