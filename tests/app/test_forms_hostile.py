"""Every TUI form with hostile values, through Pilot: each Input of each screen gets one of
huge, negative, zero, NaN/inf, lone-surrogate (non-UTF-8), long and path-like values (rotating:
one per field keeps this to seconds), then the run key. The form refuses (whatever reaches the engine passed the validation layer: numbers the
libraries accept, text that encodes), and the app lives (same screen, still running)."""
from __future__ import annotations

import math
from typing import Any

from textual.widgets import Input

from app.app import SCREEN_KEYS
from app.validate import MAX_TEXT_CHARS
from app_fakes import FakeEngine, until
from engine.budget import SEED_MAX

SIZE = (140, 48)
HOSTILE = ["-1", "0", "99999999999999999999999", "nan", "inf", "1e309", "\udcff\udcfe",
           "x" * 5000, "/", "/nonexistent/deep/out.jsonl", " ", "1_0", "٣"]


class RecordingEngine(FakeEngine):
    """The fake engine, recording every call the app makes into it."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.seen: list[tuple[str, tuple, dict]] = []

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name.startswith("_") or name in ("seen",) or not callable(attr):
            return attr

        def call(*a: Any, **kw: Any) -> Any:
            super(RecordingEngine, self).__getattribute__("seen").append((name, a, kw))
            return attr(*a, **kw)
        return call


def _bad_values(obj: Any, depth: int = 0) -> list[str]:
    """What no validated call may carry: ints beyond int64, non-finite floats, broken text."""
    if depth > 6:
        return []
    if isinstance(obj, bool):
        return []
    if isinstance(obj, int):
        return [] if -SEED_MAX - 1 <= obj <= SEED_MAX else [f"int {str(obj)[:12]}…"]
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [f"float {obj}"]
    if isinstance(obj, str):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in obj):
            return ["lone surrogates"]
        return [f"text of {len(obj)} chars"] if len(obj) > MAX_TEXT_CHARS else []
    if isinstance(obj, dict):
        return [b for k, v in obj.items() for b in _bad_values(k, depth + 1) + _bad_values(v, depth + 1)]
    if isinstance(obj, (list, tuple)):
        return [b for v in obj for b in _bad_values(v, depth + 1)]
    fields = getattr(obj, "__dataclass_fields__", None)
    if fields:
        return [b for f in fields for b in _bad_values(getattr(obj, f, None), depth + 1)]
    return []


async def test_every_form_refuses_hostile_values_and_the_app_lives(make_app, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a value like "0" is a legitimate relative runs file: keep it here
    eng = RecordingEngine()
    app = make_app(engine=eng)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        tried = 0
        for mode, key in SCREEN_KEYS.items():
            await pilot.press(key)
            await until(pilot, lambda: app.current_mode == mode)
            await pilot.pause()
            inputs = [w for w in app.screen.query(Input) if w.display and not w.disabled]
            for box in inputs:
                original = box.value
                # one hostile value per field, rotating so every class meets every kind of form
                for value in (HOSTILE[tried % len(HOSTILE)],):
                    box.value = value
                    box.focus()
                    await pilot.press("ctrl+r")  # press() first lets the screen handle what is queued
                    tried += 1
                    assert app.is_running and app.current_mode == mode, (mode, box.id, value[:12])
                await pilot.press("escape")           # stop anything a valid value started
                await until(pilot, lambda: not app.runner.busy)
                box.value = original
        assert tried >= 2 * len(HOSTILE)  # every value class, on at least two fields
        for name, a, kw in eng.seen:
            bad = _bad_values(list(a)) + _bad_values(kw)
            assert not bad, (name, bad)
