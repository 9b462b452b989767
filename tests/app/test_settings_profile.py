"""Issue 22, item 7: a profile selector in Settings (F6). Chosen with keys, its values fill the
form, each field it sets is marked "profile"; another profile (or none) puts back what it
replaced; the settings file never takes a profile's values as the user's. At 140×45 and 80×24."""
from __future__ import annotations

import json

import pytest
from textual.widgets import Input, Select

from app.settings import AppSettings
from app.settings_file import to_json
from engine.lm.sampling_defaults import MODEL_CARD, PROFILE, ModelSamplingDefaults
from engine.sessions.profiles import parse_config

from app_fakes import FakeEngine, until
from test_layout_sizes import screen_text, visible

CONFIG = ('[profiles.cool]\ntemperature = 0.1\ntop_k = 5\nmax_new_tokens = 33\n'
          'system_prompt = "Short."\n[profiles.cool.timeouts]\nchat = 60\n'
          '[profiles.other]\nmodel = "/models/other"\ntemperature = 0.9\n')


def _src(scr, fid: str) -> str:
    return str(scr.query_one(f"#src-{fid}").content)


async def _pick(pilot, scr, steps: int) -> None:
    """Focus the selector with the keyboard (it is the form's first field: Tab from the top),
    open it with Enter, move ``steps`` rows (negative: up), Enter."""
    sel = scr.query_one("#set-profile", Select)
    for _ in range(30):
        if sel.has_focus:
            break
        await pilot.press("tab")
    assert sel.has_focus
    await pilot.press("enter")
    await until(pilot, lambda: sel.expanded)
    for _ in range(abs(steps)):
        await pilot.press("down" if steps > 0 else "up")
    await pilot.press("enter")


@pytest.mark.parametrize("size", [(140, 45), (80, 24)], ids=lambda s: f"{s[0]}x{s[1]}")
async def test_pick_a_profile_with_keys_then_none(make_app, size):
    app = make_app(engine=FakeEngine())
    app.settings.profiles = parse_config(CONFIG).profiles
    async with app.run_test(size=size) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        await pilot.press("f6")
        await until(pilot, lambda: app.current_mode == "settings")
        await pilot.pause()
        scr = app.screen
        s = app.settings
        before = (s.sampling.temperature, s.sampling.top_k, s.sampling.max_new_tokens,
                  s.timeouts["chat"], s.system_prompt, s.sampling_sources["temperature"])
        temp_src = _src(scr, "set-temperature")
        assert temp_src == before[-1] and visible(app, scr.query_one("#set-profile"))
        await _pick(pilot, scr, 1)  # "no profile" → "cool"
        await until(pilot, lambda: s.profile == "cool")
        assert (s.sampling.temperature, s.sampling.top_k, s.sampling.max_new_tokens,
                s.timeouts["chat"], s.system_prompt) == (0.1, 5, 33, 60.0, "Short.")
        await until(pilot, lambda: scr.query_one("#set-temperature", Input).value == "0.1")
        assert scr.query_one("#set-top-k", Input).value == "5"
        assert scr.query_one("#set-max-new", Input).value == "33"
        assert scr.query_one("#timeout-chat", Input).value == "60"
        for fid in ("set-temperature", "set-top-k", "set-max-new", "timeout-chat"):
            assert _src(scr, fid) == PROFILE, fid
        for fid in ("set-top-p", "set-min-p", "set-model", "timeout-tree"):
            assert _src(scr, fid) != PROFILE, fid
        note = str(scr.query_one("#profile-note").content)
        assert "profile cool sets:" in note and "system prompt" in note
        # drawn: the selector shows the profile, the first field it set shows its tag
        rows = "\n".join(screen_text(app))
        assert "cool" in rows
        assert app.current_mode == "settings" and app.lm is not None and not app.runner.busy
        await _pick(pilot, scr, -1)  # back to "no profile": what it replaced comes back
        await until(pilot, lambda: s.profile == "")
        assert (s.sampling.temperature, s.sampling.top_k, s.sampling.max_new_tokens,
                s.timeouts["chat"], s.system_prompt, s.sampling_sources["temperature"]) == before
        await until(pilot, lambda: scr.query_one("#set-temperature", Input).value == f"{before[0]:g}")
        assert _src(scr, "set-temperature") == temp_src and _src(scr, "set-top-k") != PROFILE



async def test_a_profile_naming_a_model_reloads_and_none_goes_back(make_app):
    """Chosen in Settings, a profile naming another model loads it (the F8 path); choosing no
    profile loads the model from before."""
    app = make_app(engine=FakeEngine(), autoload=True)
    app.settings.profiles = parse_config(CONFIG).profiles
    async with app.run_test(size=(140, 45)) as pilot:
        await until(pilot, lambda: app.model_state == "ready" and not app.runner.busy)
        first = app.lm
        await pilot.press("f6")
        await until(pilot, lambda: app.current_mode == "settings")
        scr = app.screen
        await _pick(pilot, scr, 2)  # "other"
        await until(pilot, lambda: app.settings.profile == "other" and app.model_state == "ready"
                    and app.lm is not first)
        assert app.settings.model == "/models/other"
        await until(pilot, lambda: scr.query_one("#set-model", Input).value == "/models/other")
        assert _src(scr, "set-model") == PROFILE and _src(scr, "set-temperature") == PROFILE
        loaded = app.lm
        await _pick(pilot, scr, -2)  # "no profile": the model from before comes back
        await until(pilot, lambda: app.settings.profile == "" and app.model_state == "ready"
                    and app.lm is not loaded)
        assert app.settings.model == "default" and _src(scr, "set-model") == ""
        f8 = scr  # the model picker shows the same choice
        await pilot.press("f8")
        await until(pilot, lambda: app.current_mode == "models")
        assert app.screen.query_one("#profile-select", Select).value in (Select.NULL, "")
        assert f8 is not app.screen


def test_profile_values_restore_follow_the_model_and_are_not_saved(tmp_path):
    """What a profile replaced comes back when it is left: a value that followed the model
    follows the model loaded meanwhile; one you changed since stays yours; the settings file
    saves the values without the profile."""
    s = AppSettings()
    card = ModelSamplingDefaults({"temperature": 0.2, "top_p": 0.9}, MODEL_CARD)
    s.apply_model_defaults(card)
    cool = parse_config(CONFIG).profiles["cool"]
    assert s.apply_profile(cool, model_fields=True) is False  # names no model: no reload
    assert s.source_of("temperature") == PROFILE and s.source_of("timeout:chat") == PROFILE
    assert s.source_of("top_p") == MODEL_CARD
    s.sampling.max_new_tokens = 40  # changed by the user since: stays theirs
    saved = json.loads(to_json(s))
    assert saved["sampling"]["temperature"] == 0.2  # the model card's value under the profile
    assert "temperature" not in saved["sampling_set"]  # …which follows the model, not saved
    assert saved["sampling"]["top_k"] == 0 and saved["user_timeouts"] == {}
    assert saved["system_prompt"] == AppSettings().system_prompt
    assert saved["sampling"]["max_new_tokens"] == 40
    other_model = ModelSamplingDefaults({"temperature": 0.6}, "model")
    s.apply_model_defaults(other_model)  # a model switched while the profile holds temperature
    assert s.sampling.temperature == 0.1
    assert s.apply_profile(parse_config(CONFIG).profiles["other"], model_fields=True) is True
    assert (s.sampling.top_k, s.system_prompt, "chat" in s.user_timeouts) == \
        (0, AppSettings().system_prompt, False)  # cool's values gone, other's in
    assert (s.model, s.sampling.temperature) == ("/models/other", 0.9)
    assert s.sampling.max_new_tokens == 40
    assert s.clear_profile() is True
    assert (s.model, s.sampling.temperature, s.sampling_sources["temperature"]) == \
        ("default", 0.6, "model")  # follows the model loaded meanwhile
    assert s.sampling.top_p == 0.95 and s.profile_base == {}  # the second model says no top-p
