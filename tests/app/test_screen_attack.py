"""The AdvTok attack screen: opens, refuses bad input (Run disabled, inline message, nothing
reaches the engine), shows multi-phase progress and the result from a fast fake engine, cancel
returns to idle with the best-so-far, JSON export is atomic, and one run on the tiny real model."""
from __future__ import annotations

import json

import pytest
from textual.widgets import Button, Input, Select

from app.messages import JobCancelled, JobFinished, JobProgressed
from app.widgets.token_strip import changed_tokens, display_token, strip_lines
from engine.advtok.search import AttackResult  # imports torch once, at collection, not inside a timed wait
from engine.progress import report

from textual.command import CommandInput, CommandList

from app_fakes import FakeEngine, until

SIZE = (130, 60)


def fake_result(cfg: dict, stop: str, iterations: int, samples: bool = True):
    """A real engine.advtok.search.AttackResult built from scripted values."""
    can_t, can_i = ["Tell", " me", " a", " joke"], [20407, 549, 253, 13434]
    adv_t, adv_i = ["Tell", " me", " ", "a", " j", "oke"], [20407, 549, 216, 78, 474, 6489]
    n = cfg.get("samples", 0) if samples else 0
    return AttackResult(
        request=cfg["request"], response=cfg["response"], system=cfg.get("system"),
        system_used=True, request_text=cfg["request"], canonical_ids=can_i, canonical_tokens=can_t,
        canonical_score=-12.5, best_ids=adv_i, best_tokens=adv_t, best_score=-10.25,
        init_ids=can_i, stop_reason=stop, iterations=iterations,
        curve=[-12.0, -11.0, -10.25][:iterations], count="832", edge_distance=3, levenshtein=4,
        timings={"total_s": 0.2}, candidates_scored=40, memo_hits=3, candidates_per_s=200.0,
        adversarial_samples=[{"text": f"adv sample {i}", "token_ids": [1], "stop_reason": "eos",
                              "new_tokens": 1} for i in range(n)],
        canonical_samples=[{"text": f"normal sample {i}", "token_ids": [2],
                            "stop_reason": "max_new_tokens", "new_tokens": 8} for i in range(n)],
        config={k: v for k, v in cfg.items() if k not in ("request", "response")})


class FakeAttackEngine(FakeEngine):
    """The engine interface plus ``attack``: vocab → mdd → search (best score per iteration) →
    generate, every wait a ``cancel.wait``; a cancel returns the best so far like the engine."""

    def __init__(self, step_delay: float = 0.0, hold_at: int = 0, **kw) -> None:
        super().__init__(**kw)
        self.step_delay = step_delay
        self.hold_at = hold_at  # stay in the search after reporting this iteration until cancelled
        self.calls: list[dict] = []

    def attack(self, lm, fields, vocab=None, *, progress=None, cancel=None):
        self.calls.append(dict(fields))
        wait = (lambda: cancel.wait(self.step_delay)) if cancel is not None else (lambda: False)
        report(progress, "vocab", 1, 1, "vocabulary")
        report(progress, "mdd", 14, 14, "diagram built", edges=31, count="832")
        iters = fields["iters"]
        for it in range(1, iters + 1):
            if wait():
                self.cancel_seen += 1
                return fake_result(fields, "cancelled", max(1, it - 1), samples=False)
            report(progress, "search", it, iters, f"iteration {it}/{iters}", best=-12.0 + it,
                   candidates=10, cand_s=100.0, tok_s=5000.0)
            while it == self.hold_at and cancel is not None:
                if cancel.wait(0.01):
                    self.cancel_seen += 1
                    return fake_result(fields, "cancelled", it, samples=False)
        for s in range(1, 3):
            if wait():
                self.cancel_seen += 1
                return fake_result(fields, "cancelled", iters, samples=False)
            report(progress, "generate", s, 2, "sampling", tok_s=50.0)
        return fake_result(fields, "local_optimum", min(iters, 3))


async def open_attack(pilot, app):
    await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
    await pilot.press("f3")
    await until(pilot, lambda: app.current_mode == "attack")
    await pilot.pause()
    return app.screen


async def run_enabled(pilot, scr):
    """The filled form's Input.Changed messages are handled: Run is enabled, no message."""
    await until(pilot, lambda: not scr.query_one("#atk-run", Button).disabled
                and str(scr.query_one("#atk-error").content) == "")


def fill(scr, **values):
    ids = {"request": "#atk-request", "response": "#atk-response", "system": "#atk-system",
           "iters": "#atk-iters", "neighbours": "#atk-neighbours", "samples": "#atk-samples",
           "tokens": "#atk-sample-tokens", "seed": "#atk-seed", "rep": "#atk-sample-rep"}
    for k, v in values.items():
        scr.query_one(ids[k], Input).value = v


# -- pure helpers ---------------------------------------------------------------------------------
def test_strip_lines_align_tokens_with_ids_and_wrap():
    toks, ids = ["Hello", " wor", "ld", "\n", "!"], [9906, 1917, 335, 198, 0]
    lines = strip_lines(toks, ids, width=12)
    assert all(len(t.plain) <= 12 for t in lines)
    assert len(lines) % 2 == 0 and len(lines) >= 4  # token row + id row, wrapped
    joined_tokens = "".join(t.plain for t in lines[0::2])
    for shown in ("Hello", " wor", "ld", "↵", "!"):
        assert shown in joined_tokens
    for tok_row, id_row in zip(lines[0::2], lines[1::2]):
        assert len(tok_row.plain) == len(id_row.plain)  # each id sits under its token
    assert "9906" in lines[1].plain and "1917" in lines[1].plain
    assert display_token("\t\x01") == "⇥\\x01" and display_token("") == "∅"


def test_changed_tokens_marks_spans_missing_from_the_reference():
    canon = ["Tell", " me", " a", " joke"]
    adv = ["Tell", " me", " ", "a", " j", "oke"]
    assert changed_tokens(adv, canon) == [False, False, True, True, True, True]
    assert changed_tokens(canon, canon) == [False] * 4
    assert changed_tokens(adv, ["other"]) == [False] * 6  # different text: nothing claimed


# -- the screen -----------------------------------------------------------------------------------
async def test_attack_screen_opens_and_bad_input_keeps_run_disabled(make_app):
    eng = FakeAttackEngine()
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_attack(pilot, app)
        run = scr.query_one("#atk-run", Button)
        err = scr.query_one("#atk-error")
        assert run.disabled and "request" in str(err.content)  # empty form
        fill(scr, request="Tell me a joke", response="Sure, here")
        await run_enabled(pilot, scr)
        bad = [("iters", "0", "iterations"), ("iters", "ten", "not a whole number"),
               ("iters", "", "iterations"), ("neighbours", "0", "max neighbours"),
               ("samples", "1025", "samples"), ("tokens", "0", "sample tokens"),
               ("seed", "-1", "seed"), ("request", "x" * 2001, "too long"),
               ("rep", "0", "sample repetition penalty"), ("rep", "101", "sample repetition penalty"),
               ("request", "   ", "request"), ("response", "a\ud800", "broken unicode"),
               ("system", "s" * 200_001, "too long")]
        good = {"iters": "3", "neighbours": "", "samples": "2", "tokens": "8", "seed": "0",
                "request": "Tell me a joke", "response": "Sure, here", "system": "", "rep": "1"}
        for field, value, words in bad:
            fill(scr, **{field: value})
            await until(pilot, lambda: words in str(err.content))
            assert run.disabled, (field, value[:10])
            scr.query_one("#atk-iters", Input).focus()
            await pilot.press("ctrl+r")
            await pilot.press("enter")
            fill(scr, **{field: good[field]})
            await run_enabled(pilot, scr)
        assert eng.calls == []  # nothing unvalidated reached the engine
        assert scr.query_one("#attack-status") is not None  # the engine status panel stays


async def test_attack_run_shows_phases_and_result(make_app):
    eng = FakeAttackEngine(step_delay=0.01)
    app = make_app(engine=eng)
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        scr = await open_attack(pilot, app)
        fill(scr, request="Tell me a joke", response="Sure, here", iters="5", neighbours="16",
             samples="2", tokens="8", seed="7", rep="1.2")
        scr.query_one("#atk-init", Select).value = "random"
        await run_enabled(pilot, scr)
        await pilot.click("#atk-run")
        await until(pilot, lambda: any(isinstance(m, JobFinished) and m.kind == "advtok"
                                       for m in seen))
        # the hook sees the message when it is posted: wait for the screen to have shown it
        await until(pilot, lambda: scr.progress_widget.state == "finished"
                    and "local_optimum" in str(scr.query_one("#atk-summary").content))
        assert eng.calls == [{"request": "Tell me a joke", "response": "Sure, here",
                              "system": None, "iters": 5, "max_neighbours": 16, "samples": 2,
                              "sample_max_new_tokens": 8, "seed": 7, "init": "random",
                              "sample_repetition_penalty": 1.2}]
        phases = [m.progress.phase for m in seen if isinstance(m, JobProgressed) and m.kind == "advtok"]
        assert {"vocab", "mdd", "search", "generate"} <= set(phases)
        assert phases.index("search") < phases.index("generate")
        pp = scr.progress_widget
        assert pp.state == "finished" and pp.kind == "advtok"
        summary = str(scr.query_one("#atk-summary").content)
        assert "-12.500" in summary and "-10.250" in summary and "+2.250" in summary
        assert "local_optimum" in summary and "4 token edit" in summary
        canon = scr.query_one("#atk-canon").plain()
        adv = scr.query_one("#atk-adv").plain()
        assert "Tell" in canon and "20407" in canon and " joke" in canon
        assert " j" in adv and "oke" in adv and "6489" in adv
        assert list(scr.query_one("#atk-curve").data) == [-12.5, -12.0, -11.0, -10.25]
        assert "-12.50 → -10.25" in str(scr.query_one("#atk-curve-label").content)
        assert "adv sample 1" in str(scr.query_one("#atk-samples-adv").content)
        assert "normal sample 0" in str(scr.query_one("#atk-samples-can").content)
        assert "seed 7 on both sides" in str(scr.query_one("#atk-samples-adv-title").content)
        assert not scr.query_one("#atk-export", Button).disabled
        assert scr.query_one("#atk-stop", Button).disabled


async def test_attack_sparkline_follows_best_score(make_app):
    # held in the search after its last iteration: on a loaded machine the 30 iterations could
    # otherwise end (and the sampling phase clear the history) before the test reads it
    eng = FakeAttackEngine(step_delay=0.05, hold_at=30)
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_attack(pilot, app)
        fill(scr, request="Tell me a joke", response="Sure", iters="30", samples="0")
        await run_enabled(pilot, scr)
        await pilot.press("ctrl+r")
        pp = scr.progress_widget
        await until(pilot, lambda: len(pp.best_history) >= 3)
        assert pp.has_class("-search")
        hist = list(pp.best_history)
        assert hist == sorted(hist)  # the fake's best only grows
        assert "best score" in pp.figures_text()
        assert pp.rate() == 100.0 and "100.0 candidates/s" in pp.stats_text()  # not the tok_s
        await pilot.press("escape")
        await until(pilot, lambda: not app.runner.busy)


async def test_attack_cancel_returns_to_idle_with_best_so_far(make_app):
    eng = FakeAttackEngine(step_delay=10.0)
    app = make_app(engine=eng)
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        scr = await open_attack(pilot, app)
        fill(scr, request="Tell me a joke", response="Sure", iters="4")
        await run_enabled(pilot, scr)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: app.runner.busy)
        assert not scr.query_one("#atk-stop", Button).disabled
        assert scr.query_one("#atk-run", Button).disabled
        await pilot.press("escape")
        await until(pilot, lambda: any(isinstance(m, JobCancelled) for m in seen))
        await until(pilot, lambda: not app.runner.busy)
        await until(pilot, lambda: scr.progress_widget.state == "cancelled"
                    and "stopped (user)" in str(scr.query_one("#atk-summary").content))
        assert eng.cancel_seen == 1 and app.runner.in_flight() == 0
        summary = str(scr.query_one("#atk-summary").content)
        assert "stopped (user)" in summary and "cancelled" in summary
        assert not scr.query_one("#atk-run", Button).disabled
        assert scr.query_one("#atk-stop", Button).disabled
        assert scr.result is not None and scr.result_state == "cancelled"


async def test_attack_timeout_from_settings_cancels(make_app):
    eng = FakeAttackEngine(step_delay=10.0)
    app = make_app(engine=eng)
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        scr = await open_attack(pilot, app)
        app.settings.set_user_timeout("advtok", 0.3)  # the runner reads the settings' timeouts per kind
        fill(scr, request="Tell me a joke", response="Sure", iters="4")
        await run_enabled(pilot, scr)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: any(isinstance(m, JobCancelled) for m in seen))
        m = next(m for m in seen if isinstance(m, JobCancelled))
        assert m.reason == "timeout" and m.kind == "advtok"
        await until(pilot, lambda: not app.runner.busy and app.runner.in_flight() == 0)
        await until(pilot, lambda: "stopped (timeout)" in str(scr.query_one("#atk-summary").content))
        assert eng.cancel_seen == 1


async def test_attack_export_writes_json_atomically(make_app, tmp_path):
    eng = FakeAttackEngine()
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_attack(pilot, app)
        await pilot.press("ctrl+e")  # nothing yet: a warning, no file
        assert scr.last_export is None
        fill(scr, request="Tell me a joke", response="Sure", iters="2", samples="1")
        await run_enabled(pilot, scr)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: scr.result is not None and not app.runner.busy)
        await pilot.press("ctrl+e")
        await until(pilot, lambda: scr.last_export is not None)
        path = scr.last_export
        assert path.parent == app.settings.export_dir and path.suffix == ".json"
        doc = json.loads(path.read_text())
        assert doc["format"] == "tokenforge-export/1" and doc["model"]
        assert doc["kind"] == "advtok" and doc["state"] == "finished"
        assert doc["settings"]["request"] == "Tell me a joke" and doc["settings"]["iters"] == 2
        assert doc["started_at"] <= doc["finished_at"] <= doc["exported_at"]
        assert doc["result"]["best_ids"] == scr.result.best_ids
        assert doc["result"]["improvement"] == pytest.approx(2.25)
        assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
        assert str(path) in str(scr.query_one("#atk-status").content)


async def test_attack_engine_error_is_inline_and_app_survives(make_app):
    from engine.errors import ContextOverflow

    class Failing(FakeAttackEngine):
        def attack(self, lm, fields, vocab=None, *, progress=None, cancel=None):
            raise ContextOverflow("the longest tokenization is 9000 tokens", hint="shorten it")

    app = make_app(engine=Failing())
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_attack(pilot, app)
        fill(scr, request="Tell me a joke", response="Sure")
        await run_enabled(pilot, scr)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: "9000 tokens" in str(scr.query_one("#atk-error").content))
        assert app.is_running and not app.runner.busy
        assert not scr.query_one("#atk-run", Button).disabled


async def test_attack_end_to_end_on_the_tiny_model(make_app, tiny_lm):
    from app.engines import Engine

    app = make_app(engine=Engine(lm=tiny_lm))
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await until(pilot, lambda: app.model_state == "ready")
        await until(pilot, lambda: not app.runner.busy)
        await pilot.press("f3")
        await until(pilot, lambda: app.current_mode == "attack")
        scr = app.screen
        fill(scr, request="Tell me a joke", response="Sure, here", iters="2", neighbours="8",
             samples="2", tokens="8", seed="0")
        await run_enabled(pilot, scr)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: scr.job is not None and scr.job.done, timeout=180)
        assert scr.job.state == "finished", scr.job.error
        r = scr.result
        assert r.best_score >= r.canonical_score
        assert "".join(r.best_tokens) == "".join(r.canonical_tokens)  # same text, other split
        assert len(r.adversarial_samples) == 2 and len(r.canonical_samples) == 2
        assert all(s["new_tokens"] <= 8 for s in r.adversarial_samples)
        phases = {m.progress.phase for m in seen if isinstance(m, JobProgressed) and m.kind == "advtok"}
        assert {"mdd", "search", "generate"} <= phases
        assert str(r.best_ids[0]) in scr.query_one("#atk-adv").plain()


async def test_attack_actions_are_in_the_command_palette(make_app):
    eng = FakeAttackEngine()
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_attack(pilot, app)
        fill(scr, request="Tell me a joke", response="Sure", iters="2", samples="0")
        await run_enabled(pilot, scr)
        await pilot.press("ctrl+p")
        await until(pilot, lambda: bool(app.screen.query(CommandInput)))
        await pilot.press(*"run attack")
        hits = app.screen.query_one(CommandList)  # the palette searches its providers in workers
        await until(pilot, lambda: hits.option_count >= 1 and str(hits.get_option_at_index(
            hits.highlighted or 0).prompt).split("\n")[0] == "attack: Run attack")
        await pilot.press("enter")
        await until(pilot, lambda: scr.result is not None and not app.runner.busy)
        assert len(eng.calls) == 1
        titles = [c.title for c in scr.palette_commands()]
        assert titles == ["attack: Run attack", "attack: Stop attack", "attack: Export attack JSON"]
