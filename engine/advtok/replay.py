"""Replay one dataset-run record: rebuild its templated prompts from the recorded settings,
check them against the recorded token ids, re-score both tokenizations and re-sample with the
recorded seed, and say what matches. Scores are compared within a tolerance (batch composition
moves the last float bits); prompts, sampled token ids and the weights hash exactly."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from engine.errors import InputError

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

SCORE_TOL = 1e-3


@dataclass
class ReplayResult:
    row: str
    weights_match: bool
    prompts_match: dict[str, bool]
    scores: dict[str, tuple[Optional[float], float]]          # side -> (recorded, replayed)
    samples_match: dict[str, list[bool]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def scores_match(self) -> bool:
        return all(a is not None and abs(a - b) <= SCORE_TOL for a, b in self.scores.values())

    @property
    def matches(self) -> bool:
        return (self.weights_match and all(self.prompts_match.values()) and self.scores_match
                and all(all(v) for v in self.samples_match.values()))


def config_of(rec: dict[str, Any]) -> Any:
    from engine.advtok.config import AttackConfig

    known = set(AttackConfig.__dataclass_fields__)
    cfg = {k: v for k, v in (rec.get("config") or {}).items() if k in known}
    return AttackConfig(request=rec["request"], response=rec["response"], **cfg).validate()


def replay_record(lm: LoadedModel, rec: dict[str, Any], *, samples: bool = True,
                  cancel: Any = None) -> ReplayResult:
    """Re-score and (optionally) re-sample ``rec`` on ``lm``."""
    from engine.advtok.records import prompt_ids, weights_hash
    from engine.advtok.score import CandidateScorer
    from engine.advtok.samples import sample_pair
    from engine.lm.templates import split_template

    for k in ("request", "response", "canonical_ids", "best_ids", "config"):
        if k not in rec:
            raise InputError(f"row {rec.get('id')!r} has no {k!r}: not a replayable record")
    cfg = config_of(rec)
    chunks = split_template(lm.tokenizer, cfg.system)
    can, adv = [int(t) for t in rec["canonical_ids"]], [int(t) for t in rec["best_ids"]]
    recorded = rec.get("prompt_ids") or {}
    wh = (rec.get("model") or {}).get("weights_hash")
    res = ReplayResult(
        row=str(rec.get("id")), weights_match=wh == weights_hash(lm.model),
        prompts_match={"canonical": prompt_ids(chunks, cfg, can) == recorded.get("canonical"),
                       "adversarial": prompt_ids(chunks, cfg, adv) == recorded.get("adversarial")},
        scores={})
    if not res.weights_match:
        res.notes.append(f"weights differ from the recorded model ({wh})")
    prefix = chunks.prefix_ids + list(cfg.frozen_prefix_ids)
    targets = chunks.tail_ids + chunks.response_ids(cfg.response)
    scorer = CandidateScorer(lm, prefix, list(cfg.frozen_suffix_ids), targets,
                             length_norm=cfg.length_norm, token_budget=cfg.token_budget,
                             batch_cap=cfg.batch_cap, share_trunk=cfg.share_trunk)
    s_can, s_adv = scorer.score([can, adv], cancel=cancel)
    res.scores = {"canonical": (rec.get("canonical_score"), s_can),
                  "adversarial": (rec.get("best_score"), s_adv)}
    if samples and cfg.samples:
        # the recorded batch sizes (a batch's size can move a near-tied draw)
        rows = {side: max((int(x.get("batch_rows") or 0) for x in rec.get(f"{side}_samples") or []),
                          default=0) or None for side in ("adversarial", "canonical")}
        new_adv, new_can = sample_pair(lm, chunks, adv, can, cfg, prefix_cache=scorer.prefix_cache,
                                       cancel=cancel, rows=rows)
        for side, new in (("adversarial", new_adv), ("canonical", new_can)):
            old = rec.get(f"{side}_samples") or []
            res.samples_match[side] = [i < len(new) and list(o.get("token_ids") or []) ==
                                       list(new[i]["token_ids"]) for i, o in enumerate(old)]
            if len(new) != len(old):
                res.samples_match[side].append(False)
    return res
