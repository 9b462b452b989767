"""engine.errors helpers."""
from __future__ import annotations

import pytest

from engine.errors import first_line


@pytest.mark.parametrize("text, default, want", [
    ("one\ntwo", "", "one"), ("one", "", "one"), ("", "", ""), ("", "KeyError", "KeyError"),
    ("\nsecond", "KeyError", ""),  # an empty first line is the first line: no fallback
])
def test_first_line_of_a_message(text, default, want):
    """The messages built from an exception's text: an empty text (``str(KeyError())``) gave an
    IndexError in the error path itself before this helper."""
    assert first_line(text, default) == want
