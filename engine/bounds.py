"""Declared bounds: every limit on a setting is written once, on the config dataclass field it
limits, and read from there by the engine's ``validate()``, the command line's argument checks and
the TUI's form fields, so the three can never disagree.

A field declares its bound with ``bounded(default, lo=…, hi=…)`` (numbers), ``bounded(default,
choices=…)`` (names; ``pattern=`` also admits a family such as ``cuda:N``), ``bounded(default,
max_chars=…)`` (text) or ``bounded(default, max_items=…, item=Bound(…))`` (a list, each item
within its own bound). ``check(cfg)`` checks every
bounded field of a config and raises one ``InputError`` naming the first bad one; ``bound_of``
and ``bounded_fields`` let a front end build its own parser from the same declaration.

Torch-free and UI-free: imported by configs, by ``app/argcheck.py`` and by the TUI alike."""
from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from engine.errors import InputError

#: torch.Generator.manual_seed accepts at most a signed 64-bit value
SEED_MAX = 2**63 - 1
#: counts whose cost is time, not memory (iterations, tokens per answer)
BIG = 1_000_000
#: free text typed or pasted by a user (a request, a system prompt): a pasted novel is refused
#: before tokenization
MAX_TEXT_CHARS = 200_000

_MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Bound:
    """What values a setting takes. ``kind``: "int", "float", "text", "choice" or "list".

    ints and floats: within [lo, hi] (``lo_open`` / ``hi_open``: that end excluded; floats must be
    finite);
    text: at most ``max_chars`` characters (``non_empty``: blank refused);
    choice: one of ``choices``, or a whole match of ``pattern`` (shown as ``pattern_label``);
    list: a list or tuple of at most ``max_items`` items, each within ``item``.
    ``optional``: None is allowed (it means "off" or "default")."""

    kind: str
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False
    optional: bool = False
    choices: tuple[str, ...] = ()
    max_chars: Optional[int] = None
    non_empty: bool = False
    pattern: str = ""
    pattern_label: str = ""
    max_items: Optional[int] = None
    item: Optional["Bound"] = None
    label: str = ""  # the word a user sees; the field name with spaces when empty

    def name_for(self, field_name: str) -> str:
        return self.label or field_name.replace("_", " ")

    def describe(self) -> str:
        """'1–1,000,000', '(0, 1]', 'canonical | random | given', '≤ 2,000 chars',
        '≤ 16 items, each ≤ 1,000 chars'."""
        if self.kind == "choice":
            return " | ".join(self.choices + ((self.pattern_label,) if self.pattern else ()))
        if self.kind == "list":
            each = f", each {self.item.describe()}" if self.item is not None else ""
            return f"≤ {_num(self.max_items)} items{each}"
        if self.kind == "text":
            return f"≤ {self.max_chars:,} chars" if self.max_chars else "text"
        if self.kind == "int":
            return f"{_num(self.lo)}–{_num(self.hi)}"
        return f"{'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"

    def check(self, name: str, v: Any) -> None:
        """InputError with one sentence when ``v`` is outside this bound."""
        why = self.why_not(v)
        if why is not None:  # "request is empty", "seed: must be between …"
            raise InputError(f"{name}{' ' if why.startswith('is ') else ': '}{why}")

    def why_not(self, v: Any) -> Optional[str]:
        """Why ``v`` is outside this bound, without the setting's name ('must be between 1 and
        64 (got 65)'); None when it is inside. For callers that name the setting their own way
        (a config file's key and line)."""
        if v is None:
            return None if self.optional else "a value is required"
        if self.kind == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                return f"{_show(v)} is not a whole number"
            if (self.lo is not None and v < self.lo) or (self.hi is not None and v > self.hi):
                return f"must be between {_num(self.lo)} and {_num(self.hi)} (got {_num(v)})"
        elif self.kind == "float":
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite(v):
                return f"must be a finite number (got {_show(v)})"
            low = self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo)
            high = self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi)
            if low or high:
                return f"must be in {self.describe()} (got {v:g})"
        elif self.kind == "text":
            if not isinstance(v, str):
                return "must be text"
            if self.non_empty and not v.strip():
                return "is empty"
            if self.max_chars is not None and len(v) > self.max_chars:
                return f"is {len(v):,} characters: too long (limit {self.max_chars:,})"
        elif self.kind == "choice":
            if v not in self.choices and not (
                    self.pattern and isinstance(v, str) and re.fullmatch(self.pattern, v)):
                every = self.choices + ((self.pattern_label,) if self.pattern else ())
                return f"must be one of {', '.join(every)} (got {_show(v)})"
        elif self.kind == "list":
            if isinstance(v, (str, bytes)) or not isinstance(v, (list, tuple)):
                return f"must be a list (got {_show(v)})"
            if self.max_items is not None and len(v) > self.max_items:
                return f"{len(v):,} given, at most {self.max_items:,}"
            for i, x in enumerate(v if self.item is not None else ()):
                why = self.item.why_not(x)  # type: ignore[union-attr]
                if why is not None:
                    return f"item {i + 1} {why}" if why.startswith("is ") else f"item {i + 1}: {why}"
        return None


def _finite(v: int | float) -> bool:
    """A finite number a float can hold (math.isfinite raises OverflowError for a larger int)."""
    return math.isfinite(v) if isinstance(v, float) else abs(v) <= sys.float_info.max


def _num(v: Any) -> str:
    if v is None:
        return "∞"
    if isinstance(v, int) and not isinstance(v, bool):
        if abs(v) < 10**30:
            return f"{v:,}"
        # str() of an int over 4,300 digits raises: the digit count comes from its bit length
        return f"a {int(abs(v).bit_length() * math.log10(2)) + 1}-digit number"
    return f"{v:g}"


def _show(v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10**30:
        return _num(v)  # repr of an int over 4,300 digits raises
    try:
        s = repr(v)
    except ValueError:  # such an int inside a list or a table
        return f"a {type(v).__name__} holding a number too long to print"
    return s if len(s) <= 40 else s[:37] + "…"


def bounded(default: Any = _MISSING, *, lo: Optional[float] = None, hi: Optional[float] = None,
            lo_open: bool = False, hi_open: bool = False, optional: bool = False, choices: tuple[str, ...] = (),
            max_chars: Optional[int] = None, non_empty: bool = False, pattern: str = "",
            pattern_label: str = "", max_items: Optional[int] = None, item: Optional[Bound] = None,
            label: str = "", kind: Optional[str] = None,
            default_factory: Optional[Callable[[], Any]] = None, **field_kw: Any) -> Any:
    """A dataclass field carrying its ``Bound``. The kind follows from what is given (max_items
    or item → list, choices → choice, max_chars/non_empty → text, a float lo/hi or default →
    float, else int) unless ``kind`` says it."""
    if kind is None:
        if max_items is not None or item is not None:
            kind = "list"
        elif choices:
            kind = "choice"
        elif max_chars is not None or non_empty:
            kind = "text"
        elif any(isinstance(x, float) for x in (lo, hi, default)):
            kind = "float"
        else:
            kind = "int"
    b = Bound(kind=kind, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, optional=optional,
              choices=tuple(choices), max_chars=max_chars, non_empty=non_empty, pattern=pattern,
              pattern_label=pattern_label or pattern, max_items=max_items, item=item, label=label)
    meta = dict(field_kw.pop("metadata", None) or {})
    meta["bound"] = b
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta, **field_kw)
    return dataclasses.field(default=default, metadata=meta, **field_kw)


def bounded_fields(cls_or_obj: Any) -> Iterator[tuple[str, Bound]]:
    """(field name, bound) of every bounded field, in declaration order."""
    for f in dataclasses.fields(cls_or_obj):
        b = f.metadata.get("bound")
        if b is not None:
            yield f.name, b


def bound_of(cls_or_obj: Any, name: str) -> Bound:
    """The declared bound of one field (KeyError when the field declares none)."""
    for f in dataclasses.fields(cls_or_obj):
        if f.name == name and "bound" in f.metadata:
            return f.metadata["bound"]
    raise KeyError(f"{type(cls_or_obj).__name__ if not isinstance(cls_or_obj, type) else cls_or_obj.__name__}"
                   f".{name} declares no bound")


def check(cfg: Any) -> None:
    """Check every bounded field of ``cfg``; one InputError for the first that is out of bounds."""
    for name, b in bounded_fields(cfg):
        b.check(b.name_for(name), getattr(cfg, name))
