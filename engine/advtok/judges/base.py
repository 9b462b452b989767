"""One interface for every judge: a batch of (request, response) items in, one verdict per item
out, each carrying the judge's id and its raw output so a verdict can be audited later."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Protocol, Sequence

LABELS = ("harmful", "safe", "unparsed")


@dataclass(frozen=True)
class JudgeItem:
    """What a judge sees: the user's request (a benchmark's behaviour, without its context), the
    model's sampled answer, the target, and the row's context (HarmBench's ContextString) kept
    apart, so a judge with a contextual prompt can use it as its authors do."""

    request: str
    response: str
    target: str = ""
    category: str = ""
    context: str = ""

    @property
    def prompt(self) -> str:
        """The whole user turn the model under test saw: the context, then the request
        (HarmBench's layout), or the request alone."""
        from engine.advtok.judges.prompts import HARMBENCH_CONTEXT_JOIN

        if self.context.strip():
            return HARMBENCH_CONTEXT_JOIN.format(context=self.context.strip(),
                                                 behavior=self.request.strip())
        return self.request


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


def versions() -> dict[str, str]:
    """The tool's and the libraries' versions a verdict was made with."""
    from importlib import metadata

    out = {}
    for pkg in ("tokenforge", "torch", "transformers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def judge_info(judge: Any, lm: Any, settings: dict[str, Any], templates: Sequence[str]
               ) -> dict[str, Any]:
    """What a record keeps about a judge beside its verdicts: the model and its weights hash
    (model judges), every setting, a hash of its prompt text, tool and library versions."""
    from engine.advtok.judges.prompts import prompt_hash

    info: dict[str, Any] = {"kind": getattr(judge, "kind", judge.id), "settings": settings,
                            "prompt_sha256": prompt_hash(templates), "versions": versions()}
    if lm is not None:
        from engine.lm.weights_hash import weights_hash

        info["model"] = {"spec": lm.spec, "name": lm.name, "dtype": lm.dtype,
                         "device": lm.device, "weights_hash": weights_hash(lm.model)}
    return info
