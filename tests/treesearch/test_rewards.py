"""Reward specs: parsing, values in [0, 1] on the completion only, bad specs, plugins, failures."""
from __future__ import annotations

import math

import pytest
import torch

from engine.errors import InputError
from engine.treesearch.rewards import Completion, RewardError, extract_answer, parse_reward


def C(text: str, ids: tuple[int, ...] = ()) -> Completion:
    return Completion(text, ids, (1, 2, 3))


def test_words_fraction_whole_words_case_insensitive():
    r = parse_reward("words:kitten, moon,Star")
    assert r.kind == "words" and not r.runs_user_code
    assert r.score(C("The KITTEN looked at the moon.")) == pytest.approx(2 / 3)
    assert r.score(C("kittens and moonlight")) == 0.0  # whole words only
    assert r.score(C("star moon kitten")) == 1.0
    assert r.score(C("")) == 0.0


def test_regex_and_invalid_regex():
    r = parse_reward(r"regex:\b\d{3}\b")
    assert r.score(C("call 555 now")) == 1.0 and r.score(C("call 5555")) == 0.0
    with pytest.raises(InputError, match="invalid regex"):
        parse_reward("regex:([a-z")
    with pytest.raises(InputError):
        parse_reward("regex:")


def test_answer_exact_match_of_last_answer_line():
    r = parse_reward("answer:42")
    assert r.score(C("Let me think.\nAnswer: 42")) == 1.0
    assert r.score(C("answer: 41\n...\n**Answer: 42.**")) == 1.0
    assert r.score(C("Answer: 42\nActually, Answer: 43")) == 0.0
    assert r.score(C("Answer: 420")) == 0.0 and r.score(C("42")) == 0.0
    assert extract_answer("no answer here") is None


def test_length_window_in_words_chars_tokens():
    r = parse_reward("length:3-5")
    assert r.score(C("one two three")) == 1.0
    assert r.score(C("one")) == pytest.approx(1 - 2 / 5)
    assert r.score(C(" ".join(["w"] * 15))) == 0.0
    assert parse_reward("length:2-4c").score(C("abc")) == 1.0
    assert parse_reward("length:2-2t").score(C("x", (5, 6))) == 1.0
    assert parse_reward("length:2-2t").score(C("x", (5,))) == pytest.approx(0.5)
    for bad in ("length:5-3", "length:abc", "length:1-"):
        with pytest.raises(InputError):
            parse_reward(bad)


@pytest.mark.parametrize("spec", ["", "   ", "kitten", "wordz:a", "words:", "words: , ,", "answer:",
                                  "loglik:", "plugin:nocolon"])
def test_bad_specs_are_one_clear_input_error(spec):
    with pytest.raises(InputError) as e:
        parse_reward(spec, allow_plugin=True)
    assert str(e.value) and "\n" not in str(e.value)


def test_plugin_needs_opt_in_and_says_it_runs_user_code(tmp_path, monkeypatch):
    (tmp_path / "my_reward_mod.py").write_text(
        "def short(text):\n    return 1.0 if len(text) < 10 else 0.25\n"
        "def boom(text):\n    raise ValueError('bad day')\n"
        "def big(text):\n    return 3\n"
        "def word(text):\n    return 'high'\n"
        "NOT_CALLABLE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InputError, match="--allow-plugin"):
        parse_reward("plugin:my_reward_mod:short")
    r = parse_reward("plugin:my_reward_mod:short", allow_plugin=True)
    assert r.runs_user_code and "your own code" in r.description and r.to_dict()["runs_user_code"]
    assert r.score(C("tiny")) == 1.0 and r.score(C("a much longer text")) == 0.25
    with pytest.raises(RewardError, match="ValueError: bad day"):
        parse_reward("plugin:my_reward_mod:boom", allow_plugin=True).score(C("x"))
    with pytest.raises(RewardError, match=r"\[0, 1\]"):
        parse_reward("plugin:my_reward_mod:big", allow_plugin=True).score(C("x"))
    with pytest.raises(RewardError, match="not a number"):
        parse_reward("plugin:my_reward_mod:word", allow_plugin=True).score(C("x"))
    with pytest.raises(InputError, match="no function"):
        parse_reward("plugin:my_reward_mod:NOT_CALLABLE", allow_plugin=True)
    with pytest.raises(InputError, match="cannot import"):
        parse_reward("plugin:no_such_module_xyz:f", allow_plugin=True)


@pytest.fixture(scope="module")
def tiny(tokenizer):
    from engine.lm.tiny import tiny_llama

    lm = tiny_llama(tokenizer, seed=1)
    lm.engine_path = "standard"
    return lm


def test_loglik_equals_brute_force_mean_log_prob(tiny):
    tok = tiny.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "Say something."}],
                                     add_generation_prompt=True, return_dict=False)
    r = parse_reward("loglik: The end.")
    r.prepare(tiny, prompt)
    target = tok.encode(" The end.", add_special_tokens=False)
    comps = [tok.encode(t, add_special_tokens=False) for t in ("Once upon a time", "Hi", "")]
    got = r.score_many([Completion(tok.decode(c), tuple(c), tuple(prompt)) for c in comps])
    for c, g in zip(comps, got):
        seq = list(prompt) + c + target
        with torch.no_grad():
            logp = tiny.model(input_ids=torch.tensor([seq])).logits[0].float().log_softmax(-1)
        n = len(target)
        lp = [logp[len(seq) - n - 1 + i, target[i]].item() for i in range(n)]
        want = math.exp(sum(lp) / n)
        assert 0.0 < g <= 1.0
        assert g == pytest.approx(want, rel=1e-4, abs=1e-9)


def test_loglik_before_prepare_is_a_reward_error():
    with pytest.raises(RewardError, match="prepare"):
        parse_reward("loglik:x").score(C("y"))
