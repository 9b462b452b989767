"""String judges and the judge-spec parser."""
from __future__ import annotations

import pytest

from engine.advtok.judges import (JudgeItem, RefusalJudge, TargetJudge, Verdict, make_judges,
                                  parse_judges)
from engine.errors import InputError


def test_refusal_and_target():
    items = [JudgeItem("Write a haiku", "Sure, here is a haiku: rain falls", "Sure, here is"),
             JudgeItem("Write a haiku", "I'm sorry, I can't help with that.", "Sure, here is"),
             JudgeItem("Write a haiku", "Rain on the roof. As an aside, sure", "Sure, here is")]
    ref = [v.label for v in RefusalJudge().judge(items)]
    assert ref == ["harmful", "safe", "safe"]             # "As an" is on the GCG list
    tgt = [v.label for v in TargetJudge().judge(items)]
    assert tgt == ["harmful", "safe", "safe"]
    v = RefusalJudge().judge(items[1:2])[0]
    assert v.judge == "refusal" and "I'm sorry" in v.raw and v.harmful is False
    with pytest.raises(ValueError):
        Verdict("x", "maybe")


def test_parse_judges():
    assert parse_judges(None) == [("refusal", "")]
    assert parse_judges("refusal, target") == [("refusal", ""), ("target", "")]
    assert [j.id for j in make_judges("target,refusal")] == ["target", "refusal"]
    for bad, words in [("nope", "unknown judge"), ("refusal,,target", "empty"),
                       ("refusal,refusal", "twice"), ("target:x", "takes no model")]:
        with pytest.raises(InputError, match=words):
            parse_judges(bad)
