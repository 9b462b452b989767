"""The editable tokenization lattice: every edit stays on the diagram, and the score after an
edit (through the cached, trunk-sharing scorer) equals scoring that tokenization from scratch."""
from __future__ import annotations

import pytest

from engine.advtok.lattice import TokenLattice
from engine.advtok.score import reference_scores
from engine.advtok.search import DEFAULT_SYSTEM, AttackConfig, run_attack
from engine.errors import InputError

REQUEST = "Compose an email about the weather"
RESPONSE = "Sure, here it is."


@pytest.fixture
def lat(tiny_lm):
    return TokenLattice(tiny_lm, REQUEST, RESPONSE, DEFAULT_SYSTEM)


def _scratch(lm, lat, ids):
    return reference_scores(lm, lat.prefix, [ids], lat.between, lat.targets)[0]


def test_split_merge_shift_scores_equal_scratch(tiny_lm, lat):
    assert lat.ids == lat.canonical
    assert lat.score == pytest.approx(_scratch(tiny_lm, lat, lat.ids), abs=1e-4)
    i = next(k for k, (s, e, _) in enumerate(lat.spans()) if e - s >= 3)
    before = list(lat.ids)
    ed = lat.split(i)
    assert len(ed.ids) == len(before) + 1 and lat.mdd.contains(ed.ids)
    assert ed.ids[:i] == before[:i] and ed.ids[i + 2:] == before[i + 1:]
    assert ed.score == pytest.approx(_scratch(tiny_lm, lat, ed.ids), abs=1e-4)
    assert ed.score != pytest.approx(lat.canonical_score, abs=1e-6)
    back = lat.merge(i)
    assert lat.mdd.decode_bytes(back.ids) == lat.mdd.decode_bytes(before)
    assert len(back.ids) == len(before)
    assert back.score == pytest.approx(_scratch(tiny_lm, lat, back.ids), abs=1e-4)
    moved = lat.shift(0, 1)
    assert lat.mdd.contains(moved.ids) and moved.ids != back.ids
    assert lat.char_spans()[0][1] == lat.char_spans(back.ids)[0][1] + 1
    assert moved.score == pytest.approx(_scratch(tiny_lm, lat, moved.ids), abs=1e-4)


def test_bad_edits_are_one_clear_error(lat):
    with pytest.raises(InputError, match="nothing after it"):
        lat.merge(len(lat.ids) - 1)
    with pytest.raises(InputError, match="no token at position"):
        lat.split(999)
    while not any(e - s == 1 for s, e, _ in lat.spans()):  # split until a one-byte token
        lat.split(next(k for k, (s, e, _) in enumerate(lat.spans()) if e - s > 1))
    one_byte = next(k for k, (s, e, _) in enumerate(lat.spans()) if e - s == 1)
    with pytest.raises(InputError, match="cannot be split"):
        lat.split(one_byte)
    with pytest.raises(InputError):
        lat.shift(0, -50)


def test_edited_tokenization_seeds_a_search(tiny_lm, lat):
    i = next(k for k, (s, e, _) in enumerate(lat.spans()) if e - s >= 3)
    ed = lat.split(i)
    res = run_attack(tiny_lm, AttackConfig(REQUEST, RESPONSE, iters=1, init="given",
                                           given_ids=ed.ids, max_neighbours=8))
    assert res.init_ids == ed.ids
    assert res.best_score >= ed.score - 1e-4  # the search never ends below its start
