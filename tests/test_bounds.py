"""engine/bounds.py: a declared bound accepts its edges, refuses just outside, and check() names
the field; SamplingConfig's bounds are the ones its validate() enforces."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import pytest

from engine.bounds import Bound, bound_of, bounded, bounded_fields, check
from engine.errors import InputError
from engine.lm.config import SamplingConfig


@dataclass
class Demo:
    n: int = bounded(3, lo=1, hi=10)
    x: float = bounded(0.5, lo=0.0, hi=1.0, lo_open=True, label="ratio")
    mode: str = bounded("a", choices=("a", "b"))
    text: str = bounded("hi", max_chars=5, non_empty=True)
    opt: Optional[int] = bounded(None, lo=0, hi=2, optional=True, kind="int")


def test_kinds_follow_from_the_declaration():
    kinds = {name: b.kind for name, b in bounded_fields(Demo)}
    assert kinds == {"n": "int", "x": "float", "mode": "choice", "text": "text", "opt": "int"}


@pytest.mark.parametrize("field,good,bad", [
    ("n", [1, 10], [0, 11, 2.0, True, "3"]),
    ("x", [1e-9, 1.0], [0.0, 1.0000001, math.nan, math.inf]),
    ("mode", ["a", "b"], ["c", None]),
    ("text", ["x", "12345"], ["", "   ", "123456", 5]),
    ("opt", [None, 0, 2], [-1, 3]),
])
def test_edges_accepted_and_just_outside_refused(field, good, bad):
    for v in good:
        check(Demo(**{field: v}))
    for v in bad:
        with pytest.raises(InputError):
            check(Demo(**{field: v}))


def test_message_names_the_field_by_its_label():
    with pytest.raises(InputError, match=r"^ratio: must be in \(0, 1\]"):
        check(Demo(x=0.0))
    with pytest.raises(InputError, match=r"^n: must be between 1 and 10 \(got 11\)"):
        check(Demo(n=11))


def test_huge_integers_are_described_not_printed():
    with pytest.raises(InputError, match="digit number"):
        check(Demo(n=10**5000))


def test_bound_of_unknown_field_is_a_key_error():
    assert bound_of(Demo, "n") == Bound(kind="int", lo=1, hi=10)
    with pytest.raises(KeyError):
        bound_of(Demo, "nope")


def test_sampling_validate_enforces_each_declared_bound():
    for name, b in bounded_fields(SamplingConfig):
        if b.kind not in ("int", "float"):
            continue
        if b.lo is not None:
            below = b.lo if b.lo_open else (b.lo - 1 if b.kind == "int" else b.lo - 1e-6)
            with pytest.raises(InputError):
                SamplingConfig(**{name: below}).validate()
        if b.hi is not None:
            above = b.hi + 1 if b.kind == "int" else b.hi * (1 + 1e-6) + 1e-9
            with pytest.raises(InputError):
                SamplingConfig(**{name: above}).validate()
            SamplingConfig(**{name: b.hi}).validate()
