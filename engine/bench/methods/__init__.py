"""Comparison-dashboard methods and their registry (name → factory).

Each engineer adding a method adds one entry to ``_FACTORIES`` (imports stay lazy so a broken or
slow-to-import method never breaks the others). Combined configurations are registered as their
own named method and measured as a whole. May import engine.lm and the shared plumbing.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, Optional

from engine.errors import InputError
from .combos import CACHE_SIDE, PROMPT_SIDE, split_combination  # noqa: F401  (re-exported)

if TYPE_CHECKING:  # the registry is importable without torch (the TUI lists names at startup)
    from .base import GenState, Method, MethodOutput, Query

# name -> (module, class name, default params)
_FACTORIES: dict[str, tuple[str, str, dict]] = {
    "baseline": ("baseline", "Baseline", {}),
    "kv-reuse": ("kv_reuse", "KVReuse", {}),
    "kv-fp8": ("kv_fp8", "KVFp8", {}),
    "evict-sinks": ("kv_evict_sinks", "SinksRecent", {}),
    "evict-cake": ("kv_evict_cake", "CakeEviction", {}),
    "evict-snapkv": ("kv_evict_cake", "SnapKV", {}),
    "evict-pyramidkv": ("kv_evict_cake", "PyramidKV", {}),
    "kv-contiguous": ("kv_contiguous", "KVContiguous", {}),
    "hybrid-kv": ("kv_hybrid", "HybridKV", {}),
    "prune-nth": ("prompt_prune", "PruneEveryNth", {}),
    "prune-selfinfo": ("prompt_prune", "PruneSelfInfo", {}),
    "sparsity-magnitude": ("act_sparsity", "MagnitudeSparsity", {}),
    "sparsity-rotated": ("act_sparsity", "RotatedSparsity", {}),
    "phrase-merge": ("phrase_merge", "PhraseMerge", {}),
    "lean-fp32": ("decode_paths", "LeanExact", {}),
    "int8-decode": ("decode_paths", "Int8Decode", {}),
    "all-combined": ("combined", "make_all", {}),  # built by make_method (it needs the registry)
}


def registry() -> dict[str, Callable[..., "Method"]]:
    """Method names → factories (call with keyword params to override the defaults)."""
    out: dict[str, Callable[..., Method]] = {}
    for name, (mod, cls, defaults) in _FACTORIES.items():
        out[name] = _factory(mod, cls, defaults) if name != "all-combined" else \
            (lambda **p: make_method("all-combined", **p))
    return out


def _factory(mod: str, cls: str, defaults: dict) -> Callable[..., "Method"]:
    def make(**params: Any) -> "Method":
        klass = getattr(importlib.import_module(f"{__name__}.{mod}"), cls)
        return klass(**{**defaults, **params})
    return make


def method_names() -> list[str]:
    return list(_FACTORIES)


def make_method(name: str, **params: Any) -> "Method":
    """The method called ``name`` (or ``prompt+cache``, a combination measured as one
    configuration); an unknown name raises an InputError listing the valid ones."""
    if "+" in name:
        from .combined import make_combined

        return make_combined(name, make_method, **params)
    if name not in _FACTORIES:
        raise InputError(f"unknown method {name!r}; valid: {', '.join(method_names())}")
    if name == "all-combined":
        from .combined import make_all

        return make_all(make_method, **params)
    return registry()[name](**params)


def parse_methods(spec: str) -> list[str]:
    """'baseline,kv-fp8' → names, validated (unknown → InputError listing the valid names)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise InputError("no methods given", f"valid: {', '.join(method_names())}")
    bad = [n for n in names if n not in _FACTORIES and split_combination(n) is None]
    if bad:
        raise InputError(f"unknown method(s) {', '.join(bad)}; valid: {', '.join(method_names())}",
                         "or a combination PROMPT+CACHE measured as one run, e.g. prune-selfinfo+kv-fp8")
    return list(dict.fromkeys(names))


def __getattr__(name: str) -> Any:
    if name in ("GenState", "Method", "MethodOutput", "Query"):
        from . import base

        return getattr(base, name)
    raise AttributeError(name)


__all__ = ["GenState", "Method", "MethodOutput", "Query", "make_method", "method_names",
           "parse_methods", "registry"]
