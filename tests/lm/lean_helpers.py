"""Shared by the lean-forward tests (test_fastpath.py, test_fastcache.py): the prompts, the
tolerance against the standard forward, and a (standard, lean) pair on one model."""
from __future__ import annotations

from engine.lm.fastpath import LeanForward, make_lean_forward
from engine.lm.forward import StandardForward

ATOL = 1e-4
PROMPTS = ["Tell me about penguins and the sea.", "What is 17 times 23?",
           "Écris un poème sur la mer 🌊 en trois lignes."]


def chat_ids(tok, text):
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                   return_dict=False)


def lean_pair(lm):
    lean = make_lean_forward(lm.model)
    assert isinstance(lean, LeanForward)
    return StandardForward(lm.model), lean


def assert_close(a, b):
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= ATOL, err
