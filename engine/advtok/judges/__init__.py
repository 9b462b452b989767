"""Judges of sampled answers behind one interface (``Judge.judge(items) -> verdicts``):
``refusal`` and ``target`` (offline strings), classifier judges and ``rubric:MODEL``. Part of
engine.advtok: may import engine.lm and the plumbing, never treesearch or bench."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from engine.advtok.judges.base import LABELS, Judge, JudgeItem, Verdict
from engine.advtok.judges.phrases import REFUSAL_PHRASES, RefusalJudge, TargetJudge
from engine.errors import InputError

__all__ = ["LABELS", "Judge", "JudgeItem", "Verdict", "REFUSAL_PHRASES", "RefusalJudge",
           "TargetJudge", "parse_judges", "make_judges", "JUDGE_KINDS", "judge_records"]

JUDGE_KINDS = ("refusal", "target")
MODEL_KINDS: tuple[str, ...] = ("llama-guard", "shieldgemma", "wildguard", "harmbench", "rubric")


def parse_judges(spec: Optional[str]) -> list[tuple[str, str]]:
    """``refusal,target,KIND:MODEL`` -> [(kind, model)], validated (InputError otherwise)."""
    if spec is None or not spec.strip():
        return [("refusal", "")]
    out: list[tuple[str, str]] = []
    for part in (s.strip() for s in spec.split(",")):
        if not part:
            raise InputError(f"--judge {spec!r} has an empty entry")
        kind, _, model = part.partition(":")
        kind = kind.lower()
        if kind not in JUDGE_KINDS + MODEL_KINDS:
            raise InputError(f"unknown judge {kind!r}",
                             hint="judges: " + ", ".join(JUDGE_KINDS + tuple(f"{k}:MODEL" for k in MODEL_KINDS)))
        if kind in MODEL_KINDS and not model:
            raise InputError(f"judge {kind!r} needs a model: {kind}:PATH_OR_ID")
        if kind in JUDGE_KINDS and model:
            raise InputError(f"judge {kind!r} takes no model")
        if (kind, model) in out:
            raise InputError(f"judge {part!r} is given twice")
        out.append((kind, model))
    return out


def make_judges(spec: Optional[str], *, loader: Optional[Callable[[str], Any]] = None,
                batch_size: Optional[int] = None, settings: Any = None) -> list[Any]:
    """Build the judges named by ``spec`` with the judge settings of ``settings`` (a
    DatasetRunConfig: batch, rubric tokens, ShieldGemma policies; its defaults when None).
    ``loader(model_spec)`` loads a judge model (a LoadedModel); it is only called for
    model-backed judges, and a model that is not the named classifier is refused."""
    from engine.advtok.config import DatasetRunConfig

    cfg = settings if settings is not None else DatasetRunConfig()
    batch = int(batch_size if batch_size is not None else cfg.judge_batch)
    judges: list[Any] = []
    for kind, model in parse_judges(spec):
        if kind == "refusal":
            judges.append(RefusalJudge())
        elif kind == "target":
            judges.append(TargetJudge())
        else:
            if loader is None:
                raise InputError(f"judge {kind}:{model} needs a model loader")
            lm = loader(model)
            if kind == "rubric":
                from engine.advtok.judges.rubric import RubricJudge

                judges.append(RubricJudge(lm, batch_size=batch,
                                          max_new_tokens=cfg.rubric_max_tokens))
            elif kind == "shieldgemma":
                from engine.advtok.judges.classifier import ShieldGemmaJudge

                judges.append(ShieldGemmaJudge(lm, batch_size=batch,
                                               policies=cfg.shield_policies))
            else:
                from engine.advtok.judges.classifier import CLASSIFIERS

                judges.append(CLASSIFIERS[kind](lm, batch_size=batch))
    return judges


def judge_records(judges: Sequence[Any], spent: dict[str, float]) -> dict[str, Any]:
    """What a record keeps about each judge beside its verdicts (``judge_info``): its model and
    weights hash, settings, prompt hash, tool and library versions (``info()``, computed once
    per judge), when it judged and the seconds it took on this row."""
    import time

    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out: dict[str, Any] = {}
    for j in judges:
        info = getattr(j, "_info", None)
        if info is None:
            info = j.info() if hasattr(j, "info") else {}
            try:
                j._info = info
            except AttributeError:
                pass
        out[j.id] = {**info, "judged_at": now, "seconds": round(spent.get(j.id, 0.0), 3)}
    return out
