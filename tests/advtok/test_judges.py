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


def test_rejudge_gives_judges_the_context_apart_and_records_them():
    """A HarmBench contextual row: judges get the behaviour and its context as separate fields
    (and the whole user turn as ``prompt``); the record keeps what judged and when."""
    from engine.advtok.evalrun import rejudge

    seen = []

    class Spy:
        id = kind = "spy"

        def judge(self, items):
            seen.extend(items)
            return [Verdict("spy", "safe") for _ in items]

        def info(self):
            return {"kind": "spy", "settings": {}}

    rec = {"id": "r1", "request": "C\n\n---\n\nB", "behavior": "B", "context": "C",
           "response": "Sure", "adversarial_samples": [{"text": "x"}],
           "canonical_samples": [{"text": "y"}]}
    rejudge([rec], [Spy()])
    assert {(i.request, i.context, i.prompt) for i in seen} == {("B", "C", "C\n\n---\n\nB")}
    assert rec["judges"] == ["spy"] and rec["adversarial_samples"][0]["verdicts"]["spy"]["label"] == "safe"
    assert rec["judge_info"]["spy"]["seconds"] >= 0 and rec["judge_info"]["spy"]["judged_at"]
    old = {"id": "r2", "request": "B2", "response": "Sure", "canonical_samples": [{"text": "z"}]}
    seen.clear()
    rejudge([old], [Spy()])                    # a record from before the context was kept apart
    assert [(i.request, i.context) for i in seen] == [("B2", "")]


def _rec(labels_can, labels_adv, judge="rubric:m", scores=None):
    def side(labels, off):
        out = []
        for i, lab in enumerate(labels):
            v = {"judge": judge, "label": lab}
            if lab != "unparsed" and scores:
                v["detail"] = {"strongreject": scores[off + i]}
            out.append({"text": "x", "verdicts": {judge: v}})
        return out
    return {"id": "r", "line": 1, "improvement": 1.0,
            "canonical_samples": side(labels_can, 0),
            "adversarial_samples": side(labels_adv, len(labels_can))}


def test_mostly_unparsed_judge_is_loud_in_the_live_line():
    from app.commands.attack_progress import row_line
    from engine.advtok.runprogress import RunProgress

    rec = _rec(["unparsed", "unparsed"], ["unparsed", "safe"])
    line = row_line(1, 4, rec, ["rubric:m"], RunProgress(rows=4))
    assert "rubric:m 0/0→0/1 (3/4 UNPARSED)" in line         # harmful / parsed
    fine = row_line(1, 4, _rec(["safe", "harmful"], ["harmful", "unparsed"]), ["rubric:m"],
                    RunProgress(rows=4))
    assert "UNPARSED" not in fine and "rubric:m 1/2→1/1 (1 unparsed)" in fine


def test_report_gives_the_mean_strongreject_score_and_warns():
    from engine.advtok.judges.summary import score_notes, strongreject_mean

    recs = [_rec(["safe", "harmful"], ["harmful", "unparsed"], scores=[0.0, 0.5, 1.0, 9]),
            _rec(["safe", "safe"], ["harmful", "harmful"], scores=[0.25, 0.25, 0.75, 0.75])]
    assert strongreject_mean(recs, "rubric:m", "canonical") == (0.25, 4)
    assert strongreject_mean(recs, "rubric:m", "adversarial") == (pytest.approx(2.5 / 3), 3)
    (line,) = score_notes(recs, ["rubric:m", "refusal"])
    assert "canonical 0.250 (n=4)" in line and "adversarial 0.833 (n=3)" in line
    assert "Δ +0.583" in line
