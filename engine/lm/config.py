"""The language-model package's settings, torch-free, each bound declared once on its field
(engine.bounds): the engine validates with it, the command line and the TUI build their checks
from it. ``SamplingConfig`` drives every decode loop through engine.lm.sampling's pipeline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from engine.bounds import BIG, SEED_MAX, bounded, check
from engine.errors import InputError

#: banned token ids per generation: past a vocabulary's size (~256K for the largest) the list
#: could only ban everything
MAX_BANNED = 262_144


@dataclass
class SamplingConfig:
    """How to pick tokens. temperature 0 = greedy. top_k 0 = off. top_p 1.0 = off. min_p 0 = off
    (else tokens below min_p × the top token's probability are dropped). ``banned_ids``: token ids
    never chosen. Stages and their order: engine/lm/sampling.py."""

    max_new_tokens: int = bounded(256, lo=1, hi=BIG, label="max new tokens")
    temperature: float = bounded(0.7, lo=0.0, hi=100.0)
    top_k: int = bounded(0, lo=0, hi=10_000_000, label="top-k")
    top_p: float = bounded(0.95, lo=0.0, hi=1.0, lo_open=True, label="top-p")
    seed: Optional[int] = bounded(None, lo=0, hi=SEED_MAX, optional=True, kind="int")
    stop_strings: tuple[str, ...] = ()
    repetition_penalty: float = bounded(1.0, lo=0.0, hi=100.0, lo_open=True,
                                        label="repetition penalty")
    min_p: float = bounded(0.0, lo=0.0, hi=1.0, label="min-p")
    banned_ids: tuple[int, ...] = ()

    def validate(self, context_length: Optional[int] = None) -> "SamplingConfig":
        check(self)
        if context_length is not None and self.max_new_tokens >= context_length:
            raise InputError(f"max_new_tokens {self.max_new_tokens} must be below the context "
                             f"length {context_length}")
        self.stop_strings = tuple(s for s in self.stop_strings if s)
        bad = [i for i in self.banned_ids if isinstance(i, bool) or not isinstance(i, int) or i < 0]
        if bad:
            raise InputError(f"banned ids: {bad[0]!r} is not a token id (a whole number ≥ 0)")
        if len(self.banned_ids) > MAX_BANNED:
            raise InputError(f"banned ids: {len(self.banned_ids):,} given, at most {MAX_BANNED:,}")
        self.banned_ids = tuple(self.banned_ids)
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
