"""Validators for every form field, shared by all screens: each parser returns the typed value or
raises ``InputError`` with one clear sentence. Screens show that sentence inline and disable their
run/send button, so nothing unvalidated reaches the engine.

``FieldCheck`` adapts a parser to Textual's ``Input(validators=[...])``.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable, Optional

from textual.validation import ValidationResult, Validator

from engine.errors import InputError

MAX_TEXT_CHARS = 200_000  # a pasted novel is refused here, before tokenization


def _num_text(text: str, name: str) -> str:
    t = (text or "").strip().replace("_", "")
    if not t:
        raise InputError(f"{name}: enter a number")
    return t


def parse_int(text: str, name: str, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    t = _num_text(text, name)
    if not re.fullmatch(r"[+-]?\d+", t):
        raise InputError(f"{name}: '{text.strip()[:20]}' is not a whole number")
    v = int(t)
    _range(v, name, lo, hi)
    return v


def parse_float(text: str, name: str, lo: Optional[float] = None, hi: Optional[float] = None,
                lo_open: bool = False) -> float:
    t = _num_text(text, name)
    try:
        v = float(t)
    except ValueError:
        raise InputError(f"{name}: '{text.strip()[:20]}' is not a number") from None
    if not math.isfinite(v):
        raise InputError(f"{name}: must be a finite number")
    if lo_open and lo is not None and v <= lo:
        raise InputError(f"{name}: must be greater than {lo:g} (got {v:g})")
    _range(v, name, None if lo_open else lo, hi)
    return v


def _range(v: float, name: str, lo: Optional[float], hi: Optional[float]) -> None:
    if lo is not None and v < lo:
        raise InputError(f"{name}: must be ≥ {lo:g} (got {v:g})")
    if hi is not None and v > hi:
        raise InputError(f"{name}: must be ≤ {hi:g} (got {v:g})")


def parse_optional_int(text: str, name: str, lo: Optional[int] = None,
                       hi: Optional[int] = None) -> Optional[int]:
    """Empty (or 'none'/'random') → None, else a whole number in range (seeds)."""
    if not (text or "").strip() or text.strip().lower() in ("none", "random", "-"):
        return None
    return parse_int(text, name, lo, hi)


def parse_timeout(text: str, name: str) -> Optional[float]:
    """Seconds; empty, 0, 'none' or 'off' = no limit."""
    t = (text or "").strip().lower()
    if t in ("", "none", "off", "0", "inf"):
        return None
    return parse_float(text, name, 1.0, 7 * 24 * 3600.0)


def require_text(text: str, name: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """Non-empty after stripping; printable enough to encode; not absurdly long."""
    if text is None or not str(text).strip():
        raise InputError(f"{name}: empty — type something first")
    if len(text) > max_chars:
        raise InputError(f"{name}: {len(text):,} characters is too long (limit {max_chars:,})")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise InputError(f"{name}: contains broken unicode (lone surrogates)")
    return str(text)


def optional_text(text: str, name: str, max_chars: int = MAX_TEXT_CHARS) -> Optional[str]:
    if text is None or not str(text).strip():
        return None
    return require_text(text, name, max_chars)


def parse_stop_strings(text: str) -> tuple[str, ...]:
    """Comma-separated stop strings; '\\n' means a newline, '\\t' a tab; spaces around commas
    and empty entries are dropped."""
    if not (text or "").strip():
        return ()
    parts = [p.strip(" ").replace("\\n", "\n").replace("\\t", "\t") for p in text.split(",")]
    out = tuple(p for p in parts if p)
    if len(out) > 16:
        raise InputError("stop strings: at most 16")
    return out


def parse_choice(text: str, name: str, choices: tuple[str, ...]) -> str:
    t = (text or "").strip().lower()
    if t not in choices:
        raise InputError(f"{name}: one of {', '.join(choices)} (got '{text.strip()[:20]}')")
    return t


def parse_device(text: str) -> str:
    t = (text or "").strip().lower()
    if t in ("auto", "cpu", "mps") or re.fullmatch(r"cuda(:\d+)?", t):
        return t
    raise InputError(f"device: auto, cpu, mps or cuda[:N] (got '{text.strip()[:20]}')")


def parse_model_spec(text: str) -> str:
    t = require_text(text, "model", 4096).strip()
    if "\n" in t or "\x00" in t:
        raise InputError("model: one line — 'default', a directory, a .gguf file or a hub id")
    return t


def parse_dir(text: str, name: str) -> Path:
    t = require_text(text, name, 4096).strip()
    p = Path(t).expanduser()
    if p.exists() and not p.is_dir():
        raise InputError(f"{name}: {p} exists and is not a directory")
    return p


# sampling fields: the same ranges as engine.lm.sampling.SamplingConfig.validate
def parse_max_new_tokens(text: str, context_length: Optional[int] = None) -> int:
    hi = (context_length - 1) if context_length else 1_000_000
    return parse_int(text, "max new tokens", 1, hi)


def parse_temperature(text: str) -> float:
    return parse_float(text, "temperature", 0.0, 100.0)


def parse_top_k(text: str) -> int:
    return parse_int(text, "top-k", 0, 10_000_000)


def parse_top_p(text: str) -> float:
    return parse_float(text, "top-p", 0.0, 1.0, lo_open=True)


def parse_repetition_penalty(text: str) -> float:
    return parse_float(text, "repetition penalty", 0.0, 100.0, lo_open=True)


def parse_seed(text: str) -> Optional[int]:
    return parse_optional_int(text, "seed", 0, 2**63 - 1)


class FieldCheck(Validator):
    """Textual validator around a parser: the parser's InputError message is the failure text."""

    def __init__(self, parse: Callable[[str], Any]) -> None:
        super().__init__()
        self.parse = parse

    def validate(self, value: str) -> ValidationResult:
        try:
            self.parse(value)
        except InputError as e:
            return self.failure(str(e), value)
        return self.success()


def first_error(checks: dict[str, Callable[[], Any]]) -> tuple[dict[str, Any], Optional[str]]:
    """Run named parsers; return (values, first error message or None)."""
    values: dict[str, Any] = {}
    for key, fn in checks.items():
        try:
            values[key] = fn()
        except InputError as e:
            return values, str(e)
    return values, None
