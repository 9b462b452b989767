"""The language-model package's settings, torch-free, each bound declared once on its field
(engine.bounds): the engine validates with it, the command line and the TUI build their checks
from it. ``SamplingConfig`` drives every decode loop through engine.lm.sampling's pipeline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from engine.bounds import BIG, SEED_MAX, bounded, check
from engine.errors import InputError


@dataclass
class SamplingConfig:
    """How to pick tokens. temperature 0 = greedy. top_k 0 = off. top_p 1.0 = off."""

    max_new_tokens: int = bounded(256, lo=1, hi=BIG, label="max new tokens")
    temperature: float = bounded(0.7, lo=0.0, hi=100.0)
    top_k: int = bounded(0, lo=0, hi=10_000_000, label="top-k")
    top_p: float = bounded(0.95, lo=0.0, hi=1.0, lo_open=True, label="top-p")
    seed: Optional[int] = bounded(None, lo=0, hi=SEED_MAX, optional=True, kind="int")
    stop_strings: tuple[str, ...] = ()
    repetition_penalty: float = bounded(1.0, lo=0.0, hi=100.0, lo_open=True,
                                        label="repetition penalty")

    def validate(self, context_length: Optional[int] = None) -> "SamplingConfig":
        check(self)
        if context_length is not None and self.max_new_tokens >= context_length:
            raise InputError(f"max_new_tokens {self.max_new_tokens} must be below the context "
                             f"length {context_length}")
        self.stop_strings = tuple(s for s in self.stop_strings if s)
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
