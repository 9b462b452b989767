"""End to end with the real engine on the tiny random Llama: load (injected), speed probe, one
streamed chat turn through ChatSession, figures, a stop mid-answer, and export."""
from __future__ import annotations

import json

from textual.widgets import Input

from app.engines import Engine
from app.messages import JobCancelled, JobFinished, TokensGenerated
from app.widgets.chat_messages import AssistantMessage
from app.widgets.composer import Composer
from engine.lm.config import SamplingConfig

from app_fakes import until


async def test_tiny_model_chat_end_to_end(make_app, tiny_lm):
    app = make_app(engine=Engine(lm=tiny_lm))
    app.settings.set_sampling_by_user(SamplingConfig(max_new_tokens=24, temperature=0.0))  # the user's: model defaults leave it
    seen = []
    async with app.run_test(size=(110, 36), message_hook=seen.append) as pilot:
        # the probe's result is stored when its JobFinished is handled, a moment after the job
        # stops being busy (and between the vocabulary and the probe nothing is busy at all)
        await until(pilot, lambda: app.model_state == "ready" and app.speed is not None
                    and not app.runner.busy)
        assert app.speed.tok_s > 0 and app.speed.tokens == 8
        assert app.settings.measured_tok_s == app.speed.tok_s
        assert app.vocab_state in ("ready", "unavailable")
        prompt = app.screen.query_one("#prompt", Composer)
        prompt.focus()
        prompt.value = "Hello, who are you?"
        await pilot.press("enter")
        await until(pilot, lambda: any(isinstance(m, JobFinished) and m.kind == "chat"
                                       for m in seen))
        n_first = sum(isinstance(m, TokensGenerated) for m in seen)
        fin = next(m for m in seen if isinstance(m, JobFinished) and m.kind == "chat")
        r = fin.result
        streamed = "".join(m.text for m in seen if isinstance(m, TokensGenerated))
        assert streamed == r.text and r.new_tokens >= 1
        answer = app.screen.query(AssistantMessage).last()
        await until(pilot, lambda: answer.text == r.text and "tokens" in str(answer.figures.content))
        assert f"stop: {r.stop_reason}" in str(answer.figures.content)
        session = app.screen.session
        assert [m["role"] for m in session.messages][-2:] == ["user", "assistant"]

        # a long second turn (no eos: it can only stop at 1500 tokens) stopped mid-answer
        # keeps the conversation well formed
        app.settings.set_sampling_by_user(SamplingConfig(max_new_tokens=1500, temperature=0.0))  # the user's: model defaults leave it
        saved_eos, tiny_lm.eos_ids = tiny_lm.eos_ids, []
        try:
            prompt.value = "Tell me more."
            await pilot.press("enter")
            await until(pilot, lambda: sum(isinstance(m, TokensGenerated) for m in seen) > n_first
                        and app.runner.busy)
            app.screen.action_stop()
            await until(pilot, lambda: any(isinstance(m, JobCancelled) for m in seen))
            await until(pilot, lambda: not app.runner.busy and app.runner.in_flight() == 0)
        finally:
            tiny_lm.eos_ids = saved_eos
        last = session.turns[-1].result
        assert len(session.turns) == 2 and last.stop_reason == "cancelled"
        assert 0 < last.new_tokens < 1500

        app.screen.action_export()
        md, js = app.screen.last_export
        data = json.loads(js.read_text())
        assert data["kind"] == "chat" and data["started_at"]
        assert [t["user"] for t in data["result"]["turns"]] == ["Hello, who are you?",
                                                                "Tell me more."]
        sampling = data["settings"]["sampling"]
        assert sampling["max_new_tokens"] == 1500 and sampling["temperature"] == 0.0
        assert "Hello, who are you?" in md.read_text()
