"""The model's own sampling defaults: read from its generation_config.json (explicit keys only),
the bundled model's card otherwise; they replace only values nobody set, and every value says
where it came from."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine.lm.config import SamplingConfig
from engine.lm.sampling_defaults import (BUILT_IN, BUNDLED_CARD, FLAG, MODEL, MODEL_CARD, MODEL_KEYS,
                                         PROFILE, SAVED, ModelSamplingDefaults, built_in_values,
                                         from_generation_config, model_sampling_defaults, resolve)

BUILT = {k: getattr(SamplingConfig(), k) for k in MODEL_KEYS}


def test_the_built_in_values_are_sampling_configs_own():
    assert built_in_values() == BUILT


def test_do_sample_false_is_greedy_whatever_else_it_says():
    d = from_generation_config({"do_sample": False, "temperature": 0.9, "top_p": 0.5})
    assert d.values == {"temperature": 0.0} and d.source == MODEL


def test_explicit_values_are_taken_and_bad_ones_skipped_with_a_note():
    d = from_generation_config({"do_sample": True, "temperature": 0.6, "top_p": 0.8, "top_k": 20,
                                "repetition_penalty": 1.05, "min_p": 7, "eos_token_id": 2})
    assert d.values == {"temperature": 0.6, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
    assert any("min_p" in n for n in d.notes)  # 7 is outside [0, 1]
    for bad in ({"temperature": "hot"}, {"temperature": True}, {"top_k": 2.5}, {"top_p": 0.0},
                {"temperature": float("nan")}, {"do_sample": True, "temperature": 0.0}):
        got = from_generation_config(bad)
        assert got.values == {} and got.notes, bad


def test_a_config_without_sampling_keys_says_nothing_but_the_bundled_model_has_its_card(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    assert model_sampling_defaults(tmp_path) == ModelSamplingDefaults()
    card = model_sampling_defaults(tmp_path, bundled=True)
    assert card.values == BUNDLED_CARD and card.source == MODEL_CARD
    assert model_sampling_defaults(tmp_path / "nowhere").values == {}


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "\ud800".encode("utf-8", "surrogatepass")])
def test_an_unreadable_generation_config_is_a_note_not_a_crash(tmp_path, content):
    p = tmp_path / "generation_config.json"
    (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
    d = model_sampling_defaults(tmp_path)
    assert d.values == {} and len(d.notes) == 1


def test_user_values_stay_and_defaults_follow_each_model():
    cur = dict(BUILT, temperature=1.3, top_k=7)
    sources = {**{k: BUILT_IN for k in MODEL_KEYS}, "temperature": SAVED, "top_k": FLAG}
    qwen = ModelSamplingDefaults({"temperature": 0.7, "top_p": 0.8, "top_k": 20}, MODEL)
    values, src = resolve(cur, sources, qwen)
    assert values["temperature"] == 1.3 and src["temperature"] == SAVED
    assert values["top_k"] == 7 and src["top_k"] == FLAG
    assert values["top_p"] == 0.8 and src["top_p"] == MODEL
    # the next model says nothing: its values go back to the built-in ones, the user's stay
    values2, src2 = resolve(values, src, ModelSamplingDefaults())
    assert values2["top_p"] == BUILT["top_p"] and src2["top_p"] == BUILT_IN
    assert values2["temperature"] == 1.3 and src2["top_k"] == FLAG
    prof = {**src, "top_p": PROFILE}
    assert resolve(values, prof, qwen)[1]["top_p"] == PROFILE


def _folder(tiny_lm, path, gen: dict):
    from tinymodel import save_tiny

    save_tiny(tiny_lm, path)  # its own copy: a generation_config.json is added
    (path / "generation_config.json").write_text(json.dumps(gen))
    return path


def test_a_do_sample_false_folder_answers_greedily_for_every_seed(tiny_lm, tmp_path):
    """The loaded model carries its defaults; resolved into the chat's sampling they make every
    seed give the same (greedy) answer."""
    from engine.lm.chat import ChatSession
    from engine.lm.model import load_model

    lm = load_model(str(_folder(tiny_lm, tmp_path / "m", {"do_sample": False, "temperature": 0.9})))
    assert lm.sampling_defaults.values == {"temperature": 0.0}
    answers = set()
    for seed in (1, 2, 3):
        values, src = resolve(BUILT, {}, lm.sampling_defaults)
        cfg = SamplingConfig(max_new_tokens=8, seed=seed, **values).validate()
        assert cfg.greedy and src["temperature"] == MODEL
        answers.add(tuple(ChatSession(lm, sampling=cfg).send("hello there").token_ids))
    assert len(answers) == 1


def test_settings_follow_the_model_and_keep_what_the_user_applied():
    from app.settings import AppSettings

    s = AppSettings()
    s.apply_model_defaults(ModelSamplingDefaults({"temperature": 0.2, "top_p": 0.9}, MODEL_CARD))
    assert (s.sampling.temperature, s.sampling_sources["temperature"]) == (0.2, MODEL_CARD)
    s.set_sampling_by_user(SamplingConfig(temperature=0.5, top_p=0.9))
    assert s.sampling_sources["temperature"] == SAVED
    assert s.sampling_sources["top_p"] == MODEL_CARD  # unchanged: still the model's
    s.apply_model_defaults(ModelSamplingDefaults({"temperature": 0.0}, MODEL))
    assert s.sampling.temperature == 0.5 and s.sampling.top_p == BUILT["top_p"]
    assert "temperature 0.5 (saved)" in s.sampling_provenance()


def test_saved_settings_keep_only_what_the_user_set(tmp_path):
    from app.settings import AppSettings
    from app.settings_file import load_into, save

    s = AppSettings()
    s.apply_model_defaults(ModelSamplingDefaults({"temperature": 0.2, "top_p": 0.9}, MODEL_CARD))
    s.set_sampling_by_user(SamplingConfig(temperature=0.2, top_p=0.9, top_k=40))
    save(s, tmp_path / "s.json")
    fresh = AppSettings()
    assert load_into(fresh, tmp_path / "s.json") == ""
    assert fresh.sampling.top_k == 40 and fresh.sampling_sources["top_k"] == SAVED
    # the model card's values were not the user's: they are defaults again, for the next model
    assert fresh.sampling.temperature == BUILT["temperature"]
    assert fresh.sampling_sources["temperature"] == BUILT_IN


@pytest.mark.slow
def test_chat_json_says_where_each_value_came_from(tiny_lm, tmp_path):
    """A real `chat --json`: the folder's do_sample false makes it greedy (source "model"); a
    typed flag wins (source "flag")."""
    d = _folder(tiny_lm, tmp_path / "m", {"do_sample": True, "temperature": 0.33, "top_k": 5})
    cmd = [sys.executable, "-m", "app.cli", "chat", "--model", str(d), "--prompt", "hi",
           "--max-new-tokens", "3", "--json", "--alternatives", "0", "--top-k", "9"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "TOKENFORGE_SESSIONS": str(tmp_path / "s")})
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)["sampling"]
    assert got["temperature"] == {"value": 0.33, "source": MODEL}
    assert got["top_k"] == {"value": 9, "source": FLAG}
    assert got["top_p"] == {"value": BUILT["top_p"], "source": BUILT_IN}


def test_a_value_nobody_marked_stays_when_the_model_says_nothing():
    """A caller's own value (source still built-in) is not reset by a model without defaults;
    AppSettings built with a chosen SamplingConfig marks the chosen values as the user's."""
    from app.settings import AppSettings

    values, src = resolve(dict(BUILT, temperature=0.0), {}, ModelSamplingDefaults())
    assert values["temperature"] == 0.0 and src["temperature"] == BUILT_IN
    s = AppSettings(sampling=SamplingConfig(temperature=0.0))
    s.apply_model_defaults(ModelSamplingDefaults(dict(BUNDLED_CARD), MODEL_CARD))
    assert s.sampling.temperature == 0.0 and s.sampling_sources["temperature"] == SAVED
    assert s.sampling.top_p == BUNDLED_CARD["top_p"]
