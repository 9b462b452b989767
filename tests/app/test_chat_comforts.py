"""Chat comforts: copying the last answer and its code blocks (through App.copy_to_clipboard,
i.e. OSC 52), the context meter's warnings, and the memory gauge's refresh rate."""
from __future__ import annotations

from app.widgets.chat_gauges import MEMORY_PERIOD_S, MemoryGauge, code_blocks, context_text
from app.widgets.composer import Composer

from app_fakes import FakeEngine, until

ANSWER = ("Here:\n", "```python\n", "print(1)\n", "```\n", "and then\n", "~~~\nx = 2\n~~~\n")


async def test_copy_answer_and_code_blocks(make_app):
    app = make_app(engine=FakeEngine(tokens=ANSWER))
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        await pilot.press("alt+c")
        await until(pilot, lambda: any("No answer" in m for m in app.toasts))
        prompt = app.screen.query_one("#prompt", Composer)
        prompt.focus()
        prompt.value = "show code"
        await pilot.press("enter")
        await until(pilot, lambda: not app.runner.busy and app.screen.turns == 1)
        written = []
        real_write = app._driver.write
        app._driver.write = lambda data: (written.append(data), real_write(data))
        await pilot.press("alt+c")  # with the message box focused: the binding still wins
        assert app.clipboard == "".join(ANSWER)
        assert any(w.startswith("\x1b]52;c;") for w in written)  # OSC 52
        await pilot.press("alt+k")
        assert app.clipboard == "print(1)"
        await pilot.press("alt+k")
        assert app.clipboard == "x = 2"
        await pilot.press("alt+k")
        assert app.clipboard == "print(1)"  # wraps
        assert prompt.value == ""  # nothing typed into the box


def test_code_blocks():
    assert code_blocks("a\n```\none\n```\nb\n````md\n```x```\n````\n") == ["one", "```x```"]
    assert code_blocks("text\n```py\ncut off mid") == ["cut off mid"]  # unclosed last fence
    assert code_blocks("no code `inline`") == []


def test_context_meter_levels():
    assert context_text(100, 0, 256, 2048)[1] == ""
    text, level = context_text(1700, 10, 256, 2048)
    assert level == "warn" and "82 tokens left" in text
    text, level = context_text(1900, 10, 256, 2048)
    assert level == "over" and "oldest turns will be dropped" in text
    text, level = context_text(0, 1900, 256, 2048)
    assert level == "over" and "cannot fit" in text


async def test_gauges_on_screen(make_app, monkeypatch):
    timers = []  # the gauge's refresh timers: (period, callback name)
    real_interval = MemoryGauge.set_interval

    def recording_interval(self, interval, callback=None, **kw):
        timers.append((interval, getattr(callback, "__name__", "")))
        return real_interval(self, interval, callback, **kw)

    monkeypatch.setattr(MemoryGauge, "set_interval", recording_interval)
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.model_state == "ready")
        meter = app.screen.query_one("#context-meter")
        await until(pilot, lambda: "/ 2,048 tokens" in str(meter.content))
        app.screen.query_one("#prompt", Composer).value = "x" * 40
        await until(pilot, lambda: "+10 typed" in str(meter.content))
        gauge = app.screen.query_one("#memory-gauge")
        assert "RSS" in str(gauge.content) and ("MiB" in str(gauge.content) or "GiB" in str(gauge.content))
        # at most once a second: one timer of that period is all that refreshes it (counting
        # refreshes against the wall clock would measure the machine's load, not the gauge)
        assert timers == [(MEMORY_PERIOD_S, "refresh_memory")] and MEMORY_PERIOD_S >= 1.0
        start = gauge.updates
        await until(pilot, lambda: gauge.updates > start)  # but it does refresh
