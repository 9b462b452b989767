"""Prompt-side surprisal: how unexpected each token of a text was to the model, from one
scoring pass (every position's logits in a single forward, no cache kept). Position 0 has no
context and gets no figure."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

from engine.errors import ContextOverflow, InputError
from engine.lm.forward import get_forward
from engine.lm.tokeninfo import TokenInfo, infos_from_logits, piece

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


@dataclass
class ScoredToken:
    """A token of the scored text: ``info`` is None for the first one (nothing predicts it)."""

    index: int
    id: int
    text: str
    info: Optional[TokenInfo]

    @property
    def surprisal_bits(self) -> Optional[float]:
        return None if self.info is None else -self.info.logprob / math.log(2)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "text": self.text,
                "surprisal_bits": self.surprisal_bits,
                **({"logprob": self.info.logprob, "entropy": self.info.entropy,
                    "alternatives": [a.__dict__ for a in self.info.alternatives]}
                   if self.info is not None else {})}


@torch.inference_mode()
def score_ids(lm: LoadedModel, ids: Sequence[int], top_k: int = 5) -> list[ScoredToken]:
    """Every token of ``ids`` with its log-probability, entropy and alternatives given the
    tokens before it: one forward over the whole sequence."""
    ids = [int(i) for i in ids]
    if not ids:
        raise InputError("nothing to score: no tokens")
    if len(ids) > lm.context_length:
        raise ContextOverflow(f"{len(ids)} tokens exceed the context length {lm.context_length}")
    fwd = get_forward(lm)
    x = torch.tensor([ids], dtype=torch.long, device=lm.torch_device)
    logits = fwd.logits(x, fwd.new_cache(), keep=0)[0]
    infos = infos_from_logits(logits[:-1], ids[1:], lm.tokenizer, top_k) if len(ids) > 1 else []
    tok = lm.tokenizer
    out = [ScoredToken(0, ids[0], piece(tok, ids[0]), None)]
    out += [ScoredToken(i + 1, t, inf.text, inf) for i, (t, inf) in enumerate(zip(ids[1:], infos))]
    return out
