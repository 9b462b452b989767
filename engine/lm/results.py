"""What one generated answer is and what it cost, torch-free: the decode loops fill it, the
session store rebuilds it from disk, and the front end (and its test fakes) read it without
importing torch."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class GenerationResult:
    """One answer and what it cost. ``stop_reason``: eos, stop_string, max_new_tokens, cancelled."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    prefill_tokens: int
    new_tokens: int
    ttft_s: float
    decode_tok_s: float
    total_s: float
    stop_reason: str
    dropped_turns: int = 0
    notes: list[str] = field(default_factory=list)
    discarded: bool = False  # chat: stopped before the first token, the message was not added

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
