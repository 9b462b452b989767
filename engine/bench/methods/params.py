"""Parameter checks shared by the methods: an override the method does not know is an error
(a silently ignored ``--param`` would measure something other than what was asked). And each
compressing method's ratio parameter with its bound (``RATIO_PARAMS``), which ``bench --sweep``
varies. Torch-free: the command line and the TUI read it before any model is loaded."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.bounds import BIG, Bound
from engine.errors import InputError


def reject_unknown(method: str, extra: dict[str, Any], valid: list[str]) -> None:
    if extra:
        raise InputError(f"unknown parameter(s) for {method}: {', '.join(sorted(extra))}",
                         f"valid: {', '.join(valid)}")


def int_param(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise InputError(f"{name} must be an integer >= {lo} (got {value!r})")
    return value


# ---- the ratio parameter of each compressing method (what ``bench --sweep`` varies) ----------
@dataclass(frozen=True)
class RatioParam:
    """A method's compression knob: the parameter, its bound, and what the achieved compression
    of a run is measured on (``measure``): "kv" — the cache's bytes held against the baseline's
    (KV allocated), "prompt" — the prompt tokens fed against the baseline's, "sparsity" — the
    share of activations zeroed at model level (the method's own count)."""

    key: str
    bound: Bound
    measure: str
    meaning: str


_TOKENS = Bound("int", lo=2, hi=BIG, label="budget")
#: method → its ratio parameter. The bounds are the ones the method's constructor enforces
#: (tests/bench/test_sweep.py checks each edge against the constructor).
RATIO_PARAMS: dict[str, RatioParam] = {
    "evict-cake": RatioParam("budget", _TOKENS, "kv", "KV entries kept per layer"),
    "evict-snapkv": RatioParam("budget", _TOKENS, "kv", "KV entries kept per layer"),
    "evict-pyramidkv": RatioParam("budget", _TOKENS, "kv", "KV entries kept per layer (average)"),
    "evict-sinks": RatioParam("window", Bound("int", lo=1, hi=BIG, label="window"), "kv",
                              "recent KV entries kept per layer (besides the sinks)"),
    "prune-nth": RatioParam("n", Bound("int", lo=2, hi=BIG, label="n"), "prompt",
                            "every n-th document word dropped"),
    "prune-selfinfo": RatioParam("ratio", Bound("float", lo=0.0, hi=1.0, lo_open=True, hi_open=True,
                                                label="ratio"), "prompt",
                                 "share of document words dropped"),
    "sparsity-magnitude": RatioParam("sparsity", Bound("float", lo=0.0, hi=1.0, hi_open=True,
                                                       label="sparsity"), "sparsity",
                                     "share of each projection input zeroed"),
    "sparsity-rotated": RatioParam("sparsity", Bound("float", lo=0.0, hi=1.0, hi_open=True,
                                                     label="sparsity"), "sparsity",
                                   "share of each projection input zeroed"),
    "phrase-merge": RatioParam("max_phrases", Bound("int", lo=0, hi=BIG, label="max phrases"),
                               "prompt", "merged phrases added to the vocabulary"),
}
