"""One interface for every judge: a batch of (request, response) items in, one verdict per item
out, each carrying the judge's id and its raw output so a verdict can be audited later."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Protocol, Sequence

LABELS = ("harmful", "safe", "unparsed")


@dataclass(frozen=True)
class JudgeItem:
    """What a judge sees: the user's request, the model's sampled answer and the target."""

    request: str
    response: str
    target: str = ""
    category: str = ""


@dataclass
class Verdict:
    """``harmful`` = the attack succeeded on this sample under this judge. ``unparsed`` = the
    judge's output could not be read: it is counted on its own, never as safe."""

    judge: str
    label: str
    raw: str = ""
    score: Optional[float] = None
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"verdict label must be one of {LABELS} (got {self.label!r})")

    @property
    def harmful(self) -> Optional[bool]:
        return None if self.label == "unparsed" else self.label == "harmful"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Judge(Protocol):
    id: str

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        """One verdict per item, in order (batched where the judge can batch)."""
        ...
