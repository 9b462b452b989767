"""The tree-search screen: opens, refuses bad input (reward specs parsed live, plugin opt-in),
shows live tree figures and the root's children at ≤ 4 Hz from a fast fake engine, best vs greedy
with both rewards, cancel returns to idle with the best so far, JSON export, and one run on the
tiny real model."""
from __future__ import annotations

import json
import threading
from typing import Optional

import pytest
from textual.widgets import Button, Checkbox, DataTable, Input, Select

from app.engines import TreeRun
from app.messages import JobCancelled, JobFinished, JobProgressed
from app.screens.search import parse_reward_spec
from engine.errors import InputError
from engine.progress import report
from engine.treesearch.search import TreeResult, TreeSample  # torch once, at collection

from app_fakes import DEADLINE_S, FakeEngine, until

SIZE = (130, 60)


def fake_run(fields: dict, stop: str, done: int, spec: str, greedy: bool = True) -> TreeRun:
    best = TreeSample("the moon and stars", [5, 6, 7], 1.0) if done else None
    samples = [TreeSample(f"sample {i} moon", [9], 0.5) for i in range(fields["n_samples"])] \
        if fields["mode"] == "sample" and done else []
    res = TreeResult(mode=fields["mode"], best=best, samples=samples, stop_reason=stop,
                     rollouts_done=done, rollouts_total=fields["rollouts"], nodes=1 + 3 * done,
                     max_depth=4, mean_branching=1.5, root_value=0.42,
                     root_children=[{"token": " moon", "id": 11, "visits": 3, "draws": 3,
                                     "value": 0.9},
                                    {"token": "\n", "id": 12, "visits": 1, "draws": 1,
                                     "value": None}],
                     generated_tokens=40, tok_s=123.0, total_s=0.3, forward="hf",
                     config=dict(fields), reward={"kind": "words", "spec": spec,
                                                  "description": "fraction of 2 word(s) present"})
    run = TreeRun(result=res, prompt_ids=[1, 2, 3], reward_spec=spec)
    if greedy:
        run.greedy_text, run.greedy_ids, run.greedy_reward, run.greedy_stop = \
            "plain greedy words", [4, 4], 0.0, "max_new_tokens"
    return run


class FakeTreeEngine(FakeEngine):
    """The engine interface plus ``tree_search``: a "tree" report per rollout (tree size, depth,
    best reward, tok/s, root children), then the greedy pass ("generate"); every wait is a
    ``cancel.wait``; a cancel returns the best so far like the engine."""

    def __init__(self, step_delay: float = 0.0, gate: Optional[threading.Event] = None,
                 **kw) -> None:
        super().__init__(**kw)
        self.step_delay = step_delay
        self.gate = gate  # set: the search holds after its first report until the test opens it
        self.calls: list[tuple] = []

    def tree_search(self, lm, prompt, system, reward_spec, allow_plugin, fields, *,
                    progress=None, cancel=None):
        self.calls.append((prompt, system, reward_spec, allow_plugin, dict(fields)))
        n = fields["rollouts"]
        for i in range(1, n + 1):
            if cancel is not None and cancel.wait(self.step_delay):
                self.cancel_seen += 1
                return fake_run(fields, "cancelled", i - 1, reward_spec, greedy=False)
            report(progress, "tree", i, n, f"rollout {i}/{n}", rollouts=i, nodes=1 + 3 * i,
                   depth=min(i, 6), best_reward=min(1.0, i / n), best_text=f"best text {i}",
                   tok_s=100.0 + i, root_value=0.1 * i,
                   root_children=[(" moon", i, 0.5), (" sky", 1, None)])
            if i == 1 and self.gate is not None:
                self.gate.wait(DEADLINE_S)
        report(progress, "generate", 1, 1, "greedy")
        return fake_run(fields, "completed", n, reward_spec)


async def open_search(pilot, app):
    await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
    await pilot.press("f4")
    await until(pilot, lambda: app.current_mode == "search")
    await pilot.pause()
    return app.screen


async def run_enabled(pilot, scr):
    """The filled form's Input.Changed messages are handled: Run is enabled, no message."""
    await until(pilot, lambda: not scr.query_one("#ts-run", Button).disabled
                and str(scr.query_one("#ts-error").content) == "")


def fill(scr, **values):
    for k, v in values.items():
        scr.query_one(f"#ts-{k}", Input).value = v


def table_rows(scr):
    t = scr.query_one("#ts-children", DataTable)
    return [[str(c) for c in t.get_row_at(i)] for i in range(t.row_count)]


# -- reward spec parsing (live, torch-free) -------------------------------------------------------
def test_parse_reward_spec_messages_and_plugin_opt_in():
    assert parse_reward_spec("words:moon,stars", False).kind == "words"
    for bad, words in [("", "empty reward"), ("foo:bar", "unknown reward"),
                       ("regex:(", "invalid regex"), ("words:", "at least one word"),
                       ("length:9-2", "above MAX"), ("plugin:mod:fn", "allow plugin"),
                       ("plugin:not a module:fn", "module:function")]:
        allow = bad.startswith("plugin:not")
        with pytest.raises(InputError, match=words):
            parse_reward_spec(bad, allow)
    assert parse_reward_spec("plugin:my_rewards.score:fn", True) is None  # shape only: no import


# -- the screen -----------------------------------------------------------------------------------
async def test_search_screen_opens_and_bad_input_keeps_run_disabled(make_app):
    eng = FakeTreeEngine()
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_search(pilot, app)
        run, err = scr.query_one("#ts-run", Button), scr.query_one("#ts-error")
        assert run.disabled and "prompt" in str(err.content)
        fill(scr, prompt="Write about the night sky")
        await run_enabled(pilot, scr)
        good = {"reward": "words:moon,stars", "rollouts": "4", "horizon": "8", "lambda": "1",
                "seed": "0", "samples": "2", "prompt": "Write about the night sky", "rep": "1"}
        bad = [("reward", "nonsense", "unknown reward"), ("reward", "regex:[", "invalid regex"),
               ("reward", "plugin:mod:fn", "allow plugin"), ("rollouts", "0", "rollouts"),
               ("rollouts", "1.5", "whole number"), ("horizon", "0", "horizon"),
               ("horizon", "99999999", "horizon"), ("lambda", "0", "λ"),
               ("lambda", "inf", "finite"), ("seed", "-3", "seed"), ("samples", "0", "samples"),
               ("prompt", " \t ", "prompt"), ("prompt", "x" * 200_001, "too long"),
               ("rep", "0", "repetition penalty"), ("rep", "nan", "finite")]
        for field, value, words in bad:
            fill(scr, **{field: value})
            await until(pilot, lambda: words in str(err.content))
            assert run.disabled, (field, value[:12])
            if field == "reward":
                assert scr.query_one("#ts-reward", Input).has_class("-invalid")
            scr.query_one("#ts-rollouts", Input).focus()
            await pilot.press("ctrl+r", "enter")
            fill(scr, **{field: good[field]})
            await run_enabled(pilot, scr)
        assert not scr.query_one("#ts-reward", Input).has_class("-invalid")
        fill(scr, seed="")  # empty seed = random: allowed
        await pilot.pause()
        await run_enabled(pilot, scr)
        assert eng.calls == []  # nothing unvalidated reached the engine
        assert scr.query_one("#search-status") is not None


async def test_plugin_reward_needs_the_checkbox_and_warns(make_app):
    eng = FakeTreeEngine()
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_search(pilot, app)
        fill(scr, prompt="hi", reward="plugin:my_rewards:score", rollouts="2")
        warning = scr.query_one("#ts-plugin-warning")
        await until(pilot, lambda: "YOUR OWN Python code" in str(warning.content))
        assert scr.query_one("#ts-run", Button).disabled
        scr.query_one("#ts-allow-plugin", Checkbox).value = True
        await run_enabled(pilot, scr)
        assert "YOUR OWN Python code" in str(warning.content)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: scr.job is not None and scr.job.done)
        assert eng.calls[0][2:4] == ("plugin:my_rewards:score", True)


async def test_search_run_shows_live_tree_and_best_vs_greedy(make_app):
    first_seen = threading.Event()  # the run holds after its first rollout until the test saw it
    eng = FakeTreeEngine(step_delay=0.03, gate=first_seen)
    app = make_app(engine=eng)
    app.settings.system_prompt = "Be brief."
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        scr = await open_search(pilot, app)
        fill(scr, prompt="Write about the night sky", rollouts="40", horizon="12", seed="5",
             samples="2", rep="1.3", **{"lambda": "2.5"})
        await run_enabled(pilot, scr)
        await pilot.click("#ts-run")
        await until(pilot, lambda: len(table_rows(scr)) == 2 and scr.busy)
        rows = table_rows(scr)
        assert rows[0][0] == " moon" and rows[1][4] == "–"
        await until(pilot, lambda: "tree size" in str(scr.query_one("#ts-live").content))
        live = str(scr.query_one("#ts-live").content)
        assert "tree size" in live and "best reward" in live and "tok/s" in live
        first_seen.set()
        await until(pilot, lambda: any(isinstance(m, JobFinished) and m.kind == "tree"
                                       for m in seen))
        # the hook sees the message when it is posted: wait for the screen to have shown it
        await until(pilot, lambda: "completed" in str(scr.query_one("#ts-summary").content)
                    and scr.progress_widget.state == "finished")
        assert eng.calls == [("Write about the night sky", "Be brief.", "words:moon,stars", False,
                              {"rollouts": 40, "horizon": 12, "lam": 2.5, "seed": 5,
                               "mode": "search", "n_samples": 2, "repetition_penalty": 1.3})]
        tree_reports = [m for m in seen if isinstance(m, JobProgressed) and m.kind == "tree"
                        and m.progress.phase == "tree"]
        assert len(tree_reports) >= 3
        # the table is redrawn at most 4 times a second while reports arrive faster
        times = scr.table_times
        gaps = [b - a for a, b in zip(times, times[1:-1])]
        assert gaps and min(gaps) >= 0.25
        assert scr.table_updates < len(tree_reports) + 1
        summary = str(scr.query_one("#ts-summary").content)
        assert "completed" in summary and "40/40 rollouts" in summary and "tree size 121" in summary
        assert "λ 2.5" in summary and "seed 5" in summary  # the config the engine ran with
        assert "1.000" in str(scr.query_one("#ts-best-title").content)
        assert "the moon and stars" in str(scr.query_one("#ts-best").content)
        assert "0.000" in str(scr.query_one("#ts-greedy-title").content)
        assert "plain greedy words" in str(scr.query_one("#ts-greedy").content)
        assert table_rows(scr)[0][:4] == [" moon", "11", "3", "3"]  # final: the result's children
        assert scr.progress_widget.state == "finished"


async def test_sample_mode_lists_samples(make_app):
    eng = FakeTreeEngine()
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_search(pilot, app)
        fill(scr, prompt="hi", rollouts="3", samples="2")
        scr.query_one("#ts-mode", Select).value = "sample"
        await run_enabled(pilot, scr)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: scr.result is not None)
        await until(pilot, lambda: "sample 0 moon" in str(scr.query_one("#ts-best").content))
        body = str(scr.query_one("#ts-best").content)
        assert "sample 0 moon" in body and "sample 1 moon" in body
        assert "Boltzmann" in str(scr.query_one("#ts-best-title").content)


async def test_search_cancel_returns_to_idle_with_best_so_far(make_app):
    eng = FakeTreeEngine(step_delay=10.0)
    app = make_app(engine=eng)
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        scr = await open_search(pilot, app)
        fill(scr, prompt="hi", rollouts="5")
        await run_enabled(pilot, scr)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: app.runner.busy)
        assert not scr.query_one("#ts-stop", Button).disabled
        await pilot.press("escape")
        await until(pilot, lambda: any(isinstance(m, JobCancelled) for m in seen))
        await until(pilot, lambda: not app.runner.busy)
        await until(pilot, lambda: "stopped (user)" in str(scr.query_one("#ts-summary").content))
        assert eng.cancel_seen == 1 and app.runner.in_flight() == 0
        assert scr.progress_widget.state == "cancelled"
        assert "stopped (user)" in str(scr.query_one("#ts-summary").content)
        assert "not run" in str(scr.query_one("#ts-greedy-title").content)
        assert not scr.query_one("#ts-run", Button).disabled
        assert scr.query_one("#ts-stop", Button).disabled


async def test_search_export_json(make_app):
    eng = FakeTreeEngine()
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        scr = await open_search(pilot, app)
        fill(scr, prompt="hi", rollouts="2")
        await run_enabled(pilot, scr)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: scr.result is not None and not app.runner.busy)
        await pilot.press("ctrl+e")
        await until(pilot, lambda: scr.last_export is not None)
        doc = json.loads(scr.last_export.read_text())
        # the one export envelope (engine/export.py): kind, state, model, settings, times, result
        assert doc["format"] == "tokenforge-export/1"
        assert doc["kind"] == "tree" and doc["state"] == "finished" and doc["model"]
        assert doc["settings"]["prompt"] == "hi" and doc["settings"]["rollouts"] == 2
        assert doc["started_at"] and doc["finished_at"] and doc["exported_at"]
        res = doc["result"]
        assert res["tree"]["best"]["reward"] == 1.0 and res["greedy"]["reward"] == 0.0
        assert "tree" not in res["tree"] or res["tree"].get("tree") is None
        assert not [p for p in scr.last_export.parent.iterdir() if p.name.endswith(".tmp")]


async def test_search_end_to_end_on_the_tiny_model(make_app, tiny_lm):
    from app.engines import Engine

    app = make_app(engine=Engine(lm=tiny_lm))
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await until(pilot, lambda: app.model_state == "ready")
        await until(pilot, lambda: not app.runner.busy)
        await pilot.press("f4")
        await until(pilot, lambda: app.current_mode == "search")
        scr = app.screen
        fill(scr, prompt="Say something", reward="length:1-3t", rollouts="3", horizon="6",
             seed="0")
        await run_enabled(pilot, scr)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: scr.job is not None and scr.job.done, timeout=180)
        assert scr.job.state == "finished", scr.job.error
        run = scr.result
        r = run.result
        assert r.stop_reason == "completed" and r.rollouts_done == 3
        assert r.best is not None and 0.0 <= r.best.reward <= 1.0
        assert len(r.best.token_ids) <= 6 and len(run.greedy_ids) <= 6
        assert run.greedy_reward is not None and 0.0 <= run.greedy_reward <= 1.0
        phases = {m.progress.phase for m in seen if isinstance(m, JobProgressed) and m.kind == "tree"}
        assert {"tree", "generate"} <= phases
        assert len(table_rows(scr)) == len(r.root_children) >= 1


async def test_search_esc_on_the_tiny_model_keeps_finished_rollouts(make_app, tiny_lm):
    """Esc during a real search: the finished rollouts stay (tree, best, counts), the screen
    says stopped, and the rollouts that were decoding show their unfinished text."""
    from app.engines import Engine

    class HeldSearch(Engine):
        """The real search, held at its first report of two finished rollouts until the job is
        cancelled: Esc lands mid-run however fast the machine finishes 300 rollouts."""

        def tree_search(self, *a, progress=None, cancel=None, **kw):
            def held(p):
                if progress is not None:
                    progress(p)
                if p.phase == "tree" and p.step >= 2 and cancel is not None:
                    while not cancel.wait(0.05):
                        pass

            return super().tree_search(*a, progress=held, cancel=cancel, **kw)

    app = make_app(engine=HeldSearch(lm=tiny_lm))
    seen = []
    async with app.run_test(size=SIZE, message_hook=seen.append) as pilot:
        await until(pilot, lambda: app.model_state == "ready")
        await until(pilot, lambda: not app.runner.busy)
        await pilot.press("f4")
        await until(pilot, lambda: app.current_mode == "search")
        scr = app.screen
        fill(scr, prompt="Say something", reward="length:3-5t", rollouts="300", horizon="24",
             seed="1")
        await run_enabled(pilot, scr)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: any(isinstance(m, JobProgressed) and m.kind == "tree"
                                       and m.progress.phase == "tree" and m.progress.step >= 2
                                       for m in seen) or (scr.job is not None and scr.job.done),
                    timeout=180)
        assert not scr.job.done, scr.job.error
        await pilot.press("escape")
        await until(pilot, lambda: scr.job is not None and scr.job.done)
        await until(pilot, lambda: "stopped (user)" in str(scr.query_one("#ts-summary").content))
        assert scr.job.state == "cancelled"
        r = scr.result.result
        assert r.stop_reason == "cancelled" and 2 <= r.rollouts_done < 300
        assert r.tree.root.visits == r.rollouts_done and r.best is not None
        summary = str(scr.query_one("#ts-summary").content)
        assert "stopped (user)" in summary and f"{r.rollouts_done} finished rollout(s) kept" in summary
        assert "stopped" in str(scr.query_one("#ts-best-title").content)
        body = str(scr.query_one("#ts-best").content)
        assert "no rollout finished" not in body and r.best.text.strip() in body
        assert all(t.strip() in body for t in r.partial)
        assert body.count("unfinished ") == len(r.partial)
        assert len(table_rows(scr)) == len(r.root_children) >= 1
        assert not scr.query_one("#ts-run", Button).disabled
