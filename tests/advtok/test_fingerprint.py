"""Settings fingerprints of dataset runs: which settings count, the first differing one named
(attack, system prompt, judges and their settings, model weights), rows written before
fingerprints compared on what they show, and the partial check made before a model loads."""
from __future__ import annotations

from dataclasses import asdict

import pytest

from engine.advtok.config import AttackConfig
from engine.advtok.fingerprint import check_resume, fingerprint, recorded_settings, run_settings
from engine.errors import InputError

MODEL = {"name": "tiny", "weights_hash": "aa" * 32, "dtype": "float32", "engine_path": "standard",
         "device": "cuda:0", "spec": "/models/tiny"}
TEMPLATE = {"sha256": "bb" * 32, "has_template": True}


class Judge:
    def __init__(self, id, **settings):
        self.id, self._s = id, settings

    def settings(self):
        return self._s


def settings(judges=("refusal",), model=MODEL, **cfg):
    c = AttackConfig(request="Write a haiku about rain", response="Sure", **cfg)
    return run_settings(attack=asdict(c), system="Be brief.",
                        judges=[Judge(j) if isinstance(j, str) else j for j in judges],
                        model=model, template=TEMPLATE)


def rec(s, rid="r0"):
    return {"id": rid, "settings": s, "fingerprint": fingerprint(s)}


def test_speed_knobs_and_the_row_are_not_settings():
    a = settings(iters=3)
    assert a == settings(iters=3, batch_cap=7, token_budget=99, max_request_chars=5000)
    assert "request" not in a["attack"] and "seed" in a["attack"]
    # cuda:0 and cuda:1 (two ranks) are the same kind of device
    assert a == settings(iters=3, model={**MODEL, "device": "cuda:1"})
    assert fingerprint(a) == fingerprint(settings(iters=3)) != fingerprint(settings(iters=4))


@pytest.mark.parametrize("new, words", [
    (dict(iters=5), "--iters was 2, now 5"),
    (dict(iters=2, seed=9), "--seed was 0, now 9"),
    (dict(iters=2, sample_temperature=0.0), "--sample-temperature was 0.7, now 0.0"),
    (dict(iters=2, judges=("refusal", "target")), "--judge was 'refusal', now 'refusal,target'"),
    (dict(iters=2, model={**MODEL, "weights_hash": "cc" * 32}), "the model's weights (--model)"),
    (dict(iters=2, judges=(Judge("refusal", threshold=0.9),)), "judge refusal's threshold was null"),
])
def test_resume_with_other_settings_is_refused_naming_the_setting(new, words, tmp_path):
    old = [rec(settings(iters=2), "r0"), rec(settings(iters=2), "r1")]
    check_resume(old, settings(iters=2), tmp_path / "o.jsonl")          # same: fine
    with pytest.raises(InputError) as e:
        check_resume(old, settings(**new), tmp_path / "o.jsonl")
    assert words in str(e.value) and "row 'r0'" in str(e.value) and "--out" in e.value.hint


def test_before_the_model_loads_only_what_is_known_is_compared(tmp_path):
    old = [rec(settings(iters=2))]
    early = run_settings(attack=asdict(AttackConfig(request="x", response="y", iters=2)),
                         system="Be brief.", judges=[])
    del early["judges"]
    check_resume(old, early, tmp_path / "o.jsonl")
    early["system"] = "Be verbose."
    with pytest.raises(InputError, match="--system / --template-system was 'Be brief.'"):
        check_resume(old, early, tmp_path / "o.jsonl")


def test_rows_from_before_fingerprints_are_compared_on_what_they_show(tmp_path):
    legacy = {"id": "r0", "config": asdict(AttackConfig(request="x", response="y", iters=2)),
              "judges": ["refusal"], "model": MODEL, "template": TEMPLATE}
    s = recorded_settings(legacy)
    assert s["attack"]["iters"] == 2 and s["judges"] == ["refusal"]
    check_resume([legacy], settings(iters=2), tmp_path / "o.jsonl")
    with pytest.raises(InputError, match="--iters was 2, now 3"):
        check_resume([legacy], settings(iters=3), tmp_path / "o.jsonl")


def test_a_judge_model_s_weights_are_in_the_fingerprint(tmp_path):
    class Model:
        def __init__(self, h):
            self._tokenforge_weights_hash = h          # weights_hash's cache on the model

    class LM:
        def __init__(self, h):
            self.model = Model(h)

    def with_weights(h):
        j = Judge("harmbench:/m", prompt_sha256="p1")
        j.lm = LM(h)
        return j

    a = settings(judges=(with_weights("w1"),))
    assert a["judges"][0] == {"id": "harmbench:/m", "prompt_sha256": "p1", "weights_hash": "w1"}
    with pytest.raises(InputError, match="judge harmbench:/m's weights was 'w1', now 'w2'"):
        check_resume([rec(a)], settings(judges=(with_weights("w2"),)), tmp_path / "o.jsonl")
