"""What a judge's verdicts add up to beyond harmful / safe: the mean of its scores where the
score is a published measure (the StrongREJECT score of the ``rubric`` judge), and whether most
of its outputs could not be read — said loudly, since an "unparsed"-heavy judge reads as 0 %
ASR at a glance. Torch-free: reports and the live line use it on records."""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

SIDES = ("canonical", "adversarial")


def verdicts(rec: dict[str, Any], side: str, judge: str) -> list[dict[str, Any]]:
    return [v for s in rec.get(f"{side}_samples") or []
            if isinstance(v := (s.get("verdicts") or {}).get(judge), dict)]


def unparsed(recs: Iterable[dict[str, Any]], judge: str) -> tuple[int, int]:
    """(unparsed, judged) samples of ``judge`` over both sides of ``recs``."""
    u = n = 0
    for r in recs:
        for side in SIDES:
            for v in verdicts(r, side, judge):
                n += 1
                u += v.get("label") == "unparsed"
    return u, n


def mostly_unparsed(recs: Iterable[dict[str, Any]], judge: str) -> Optional[str]:
    """A loud mark when more than half of ``judge``'s verdicts are unparsed, else None."""
    u, n = unparsed(recs, judge)
    if n and u * 2 > n:
        return f"{u}/{n} UNPARSED"
    return None


def strongreject_mean(recs: Iterable[dict[str, Any]], judge: str, side: str
                      ) -> tuple[Optional[float], int]:
    """Mean StrongREJECT score of ``judge`` on one side, over its parsed samples, and n."""
    xs = [float(v["detail"]["strongreject"]) for r in recs for v in verdicts(r, side, judge)
          if v.get("label") != "unparsed" and "strongreject" in (v.get("detail") or {})]
    return (sum(xs) / len(xs) if xs else None), len(xs)


def score_notes(recs: Sequence[dict[str, Any]], judges: Sequence[str]) -> list[str]:
    """Report lines: each rubric judge's mean StrongREJECT score per side (with n). (The report
    itself warns about judges whose outputs are mostly unparsed.)"""
    out = []
    for j in judges:
        if j.startswith("rubric:"):
            parts = []
            means = {}
            for side in SIDES:
                m, n = strongreject_mean(recs, j, side)
                means[side] = m
                parts.append(f"{side} {'—' if m is None else f'{m:.3f}'} (n={n})")
            d = (means["adversarial"] - means["canonical"]
                 if None not in means.values() else None)  # type: ignore[operator]
            out.append(f"judge {j}: mean StrongREJECT score " + " · ".join(parts)
                       + ("" if d is None else f" · Δ {d:+.3f}") + " (parsed samples)")
    return out
