"""What the user can change at run time: model, sampling, engine path, timeouts, export folder.

Kept free of torch: ``SamplingSettings.to_config()`` builds the engine's ``SamplingConfig`` only
inside a worker. Timeout defaults are derived from the loaded model's measured decode speed, so a
long answer on a slow CPU is not killed by a fixed limit.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

#: kinds whose timeouts the settings screen shows (load has none: Ctrl+C stops it)
TIMEOUT_KINDS = ("chat", "advtok", "tree", "bench", "vocab", "speed")

#: how many "answers" of max_new_tokens each kind is allowed before its timeout: a tree search
#: runs dozens of rollouts, AdvTok samples and scores many candidates, a bench sweeps a suite
WORK_FACTOR = {"chat": 1.0, "advtok": 40.0, "tree": 60.0, "bench": 200.0}
SAFETY = 3.0          # measured speed varies with context length and with other load on the CPU
FLOOR_S = 30.0        # never below this
FIXED = {"vocab": 300.0, "speed": 120.0}


@dataclass
class SamplingSettings:
    """Mirror of engine.sampling.SamplingConfig (same fields, same ranges, no torch import)."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 0.95
    seed: Optional[int] = None
    stop_strings: tuple[str, ...] = ()
    repetition_penalty: float = 1.0

    def to_config(self) -> Any:
        from engine.sampling import SamplingConfig  # worker thread only (imports torch)

        return SamplingConfig(**asdict(self))


def derive_timeouts(tok_s: Optional[float], max_new_tokens: int) -> dict[str, Optional[float]]:
    """Seconds per job kind from the measured decode speed (tok/s). Unknown speed → a
    conservative 2 tok/s guess, so the default never kills a legitimately slow answer."""
    rate = tok_s if tok_s and tok_s > 0 and math.isfinite(tok_s) else 2.0
    one_answer = max_new_tokens / rate
    out: dict[str, Optional[float]] = {"load": None}
    for kind, factor in WORK_FACTOR.items():
        out[kind] = float(max(FLOOR_S, math.ceil(SAFETY * factor * one_answer / 10.0) * 10.0))
    out.update(FIXED)
    return out


def default_export_dir() -> Path:
    return Path.cwd() / "tokenforge-exports"


@dataclass
class AppSettings:
    model: str = "default"
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    engine_path: str = "fast"
    system_prompt: str = "You are a helpful assistant."
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    timeouts: dict[str, Optional[float]] = field(default_factory=lambda: derive_timeouts(None, 256))
    timeouts_user_set: bool = False
    measured_tok_s: Optional[float] = None
    export_dir: Path = field(default_factory=default_export_dir)

    @classmethod
    def from_args(cls, args: Any) -> "AppSettings":
        s = cls()
        if args is not None:
            s.model = getattr(args, "model", s.model) or s.model
            s.device = getattr(args, "device", s.device) or s.device
            s.dtype = getattr(args, "dtype", s.dtype) or s.dtype
            s.trust_remote_code = bool(getattr(args, "trust_remote_code", False))
            s.engine_path = getattr(args, "engine_path", s.engine_path) or s.engine_path
        return s

    def apply_speed(self, tok_s: Optional[float]) -> None:
        """Record a speed measurement; re-derive timeouts unless the user set them."""
        self.measured_tok_s = tok_s
        if not self.timeouts_user_set:
            self.timeouts.update(derive_timeouts(tok_s, self.sampling.max_new_tokens))
