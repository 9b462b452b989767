"""Parameter checks shared by the methods: an override the method does not know is an error
(a silently ignored ``--param`` would measure something other than what was asked)."""
from __future__ import annotations

from typing import Any

from engine.errors import InputError


def reject_unknown(method: str, extra: dict[str, Any], valid: list[str]) -> None:
    if extra:
        raise InputError(f"unknown parameter(s) for {method}: {', '.join(sorted(extra))}",
                         f"valid: {', '.join(valid)}")


def int_param(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise InputError(f"{name} must be an integer >= {lo} (got {value!r})")
    return value
