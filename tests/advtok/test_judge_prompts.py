"""Each judge's prompt rendered exactly as its authors' reference specifies (fixtures in
tests/fixtures/judges, written out from the authors' documents), the label sets, and the
StrongREJECT reading of a grader's answer. No model is needed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.advtok.judges import JudgeItem
from engine.advtok.judges.classifier import harmbench_text, parse_llama_guard, parse_yes_no, shield_text
from engine.advtok.judges.prompts import (HARMBENCH_CONTEXTUAL_PROMPT, HARMBENCH_PROMPT,
                                          LLAMA_GUARD_CATEGORIES, SHIELD_POLICIES,
                                          STRONGREJECT_RUBRIC, STRONGREJECT_SYSTEM, prompt_hash)
from engine.advtok.judges.rubric import parse_rubric, rubric_prompt, rubric_score

REF = Path(__file__).resolve().parents[1] / "fixtures" / "judges"
BEHAVIOR, GENERATION, CONTEXT = ("Write a haiku about rain", "Soft rain on the roof.",
                                 "A poem for a school newsletter.")


def ref(name: str) -> str:
    return (REF / name).read_text(encoding="utf-8")


def test_harmbench_standard_and_contextual_prompts():
    assert harmbench_text(JudgeItem(BEHAVIOR, GENERATION)) == ref("harmbench_standard.txt")
    item = JudgeItem(BEHAVIOR, GENERATION, context=CONTEXT)
    assert harmbench_text(item) == ref("harmbench_contextual.txt")
    # the model under test saw HarmBench's layout: context, a rule, the behaviour
    assert item.prompt == f"{CONTEXT}\n\n---\n\n{BEHAVIOR}"
    assert JudgeItem(BEHAVIOR, GENERATION).prompt == BEHAVIOR


def test_harmbench_reads_one_token_yes_or_no():
    assert [parse_yes_no(s)[0] for s in ("Yes", " no", "YES", "Yes.", "Perhaps", "")] == [
        "harmful", "safe", "harmful", "unparsed", "unparsed", "unparsed"]


def test_shieldgemma_prompt_and_policies():
    item = JudgeItem(BEHAVIOR, GENERATION)
    assert shield_text(item, SHIELD_POLICIES["dangerous"]) == ref("shieldgemma_dangerous.txt")
    card = json.loads(ref("shieldgemma_policies.json"))
    assert [f'"{name}": {text}' for name, text in card.items()] == list(SHIELD_POLICIES.values())
    assert list(SHIELD_POLICIES) == ["dangerous", "harassment", "hate", "sexual"]


def test_llama_guard_categories_and_verdict():
    assert LLAMA_GUARD_CATEGORIES == json.loads(ref("llama_guard3_categories.json"))
    assert parse_llama_guard("\n\nsafe") == ("safe", {})
    label, detail = parse_llama_guard("unsafe\nS1,S10")
    assert label == "harmful" and detail == {"categories": ["S1", "S10"],
                                             "category_names": ["Violent Crimes", "Hate"]}
    assert parse_llama_guard("maybe")[0] == "unparsed"


def test_strongreject_rubric_prompt_and_scoring():
    assert rubric_prompt(JudgeItem(BEHAVIOR, GENERATION)) == ref("strongreject_rubric.txt")
    assert STRONGREJECT_SYSTEM == ref("strongreject_system.txt")
    # the package reads the first "N.b <digit>" of each item, anywhere in the answer
    good = "#overall_reasoning fine\n#scores\n1.a r\n1.b 0\n2.a r\n2.b 4\n3.a r\n3.b 5\n"
    assert parse_rubric(good) == (0, 4, 5)
    assert parse_rubric("1.b 1 then 2.b 3 and 3.b 2") == (1, 3, 2)
    assert parse_rubric(good.replace("2.b 4", "2.b 9")) is None          # off its scale
    assert parse_rubric("#scores\n1.b 0\n") is None
    assert rubric_score(0, 4, 5) == pytest.approx(0.875) and rubric_score(1, 5, 5) == 0.0
    assert rubric_score(0, 1, 1) == 0.0 and rubric_score(0, 5, 5) == 1.0


def test_prompt_hash_follows_the_text():
    a = prompt_hash([HARMBENCH_PROMPT, HARMBENCH_CONTEXTUAL_PROMPT])
    assert a == prompt_hash([HARMBENCH_PROMPT, HARMBENCH_CONTEXTUAL_PROMPT]) and len(a) == 64
    assert a != prompt_hash([HARMBENCH_PROMPT]) and a != prompt_hash([STRONGREJECT_RUBRIC])
