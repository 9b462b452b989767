"""Chat comforts: copying the last answer and its code blocks (through App.copy_to_clipboard,
i.e. OSC 52), the context meter's warnings, and the memory gauge's refresh rate."""
from __future__ import annotations

import time

from app.widgets.chat_gauges import MEMORY_PERIOD_S, code_blocks, context_text
from app.widgets.composer import Composer

from app_fakes import FakeEngine, until

ANSWER = ("Here:\n", "```python\n", "print(1)\n", "```\n", "and then\n", "~~~\nx = 2\n~~~\n")


async def test_copy_answer_and_code_blocks(make_app):
    app = make_app(engine=FakeEngine(tokens=ANSWER))
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        await pilot.press("alt+c")
        await until(pilot, lambda: any("No answer" in n.message for n in app._notifications))
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


async def test_gauges_on_screen(make_app):
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await until(pilot, lambda: app.model_state == "ready")
        meter = app.screen.query_one("#context-meter")
        await until(pilot, lambda: "/ 2,048 tokens" in str(meter.content))
        app.screen.query_one("#prompt", Composer).value = "x" * 40
        await until(pilot, lambda: "+10 typed" in str(meter.content))
        gauge = app.screen.query_one("#memory-gauge")
        assert "RSS" in str(gauge.content) and ("MiB" in str(gauge.content) or "GiB" in str(gauge.content))
        start, t0 = gauge.updates, time.monotonic()
        await pilot.pause(2.2)
        elapsed = time.monotonic() - t0
        assert gauge.updates - start <= elapsed / MEMORY_PERIOD_S + 1  # at most once a second
        assert gauge.updates > start  # but it does refresh
