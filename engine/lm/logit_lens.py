"""Logit lens: what each layer's residual stream "would say" at one position — the final norm
and the LM head applied to the hidden state after every decoder layer. Computed on demand with
one uncached forward up to the deepest position asked for (forward hooks read the residuals);
at the last layer it is exactly the model's own logits."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch

from engine.errors import InputError
from engine.lm.forward import get_forward
from engine.lm.tokeninfo import Alternative, piece

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


@dataclass
class LensLayer:
    """Layer ``layer`` (1-based; the last one is the model's output): its top tokens."""

    layer: int
    top: list[Alternative] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "top": [a.__dict__ for a in self.top]}


def _decoder(model: Any) -> Any:
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


@torch.inference_mode()
def layer_logits(lm: LoadedModel, ids: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
    """(len(positions), n_layers, V) fp32 logits: final norm + head on each layer's output at
    each position (a position predicts the token after it)."""
    ids = [int(i) for i in ids]
    pos = sorted({int(p) for p in positions})
    if not ids or not pos:
        raise InputError("logit lens needs tokens and at least one position")
    if pos[0] < 0 or pos[-1] >= len(ids):
        raise InputError(f"position {pos[-1] if pos[-1] >= len(ids) else pos[0]} is outside the "
                         f"{len(ids)} tokens")
    base = _decoder(lm.model)
    layers = list(base.layers)
    grabbed: list[torch.Tensor] = []

    def hook(_m: Any, _inp: Any, out: Any) -> None:
        h = out[0] if isinstance(out, (tuple, list)) else out
        grabbed.append(h[0, pos].detach())

    handles = [lay.register_forward_hook(hook) for lay in layers]
    try:
        x = torch.tensor([ids[: pos[-1] + 1]], dtype=torch.long, device=lm.torch_device)
        base(input_ids=x, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    hs = torch.stack(grabbed, dim=1)  # (P, L, H)
    fwd = get_forward(lm)
    out = fwd.head(base.norm(hs))
    index = [pos.index(int(p)) for p in positions]
    return out[index]


def logit_lens(lm: LoadedModel, ids: Sequence[int], positions: Sequence[int], top_k: int = 5
               ) -> dict[int, list[LensLayer]]:
    """Per asked position: every layer's top-k tokens with probabilities (as log-probs)."""
    logits = layer_logits(lm, ids, positions)
    lp = torch.log_softmax(logits, dim=-1)
    k = max(1, min(int(top_k), lp.shape[-1]))
    tv, ti = torch.topk(lp, k, dim=-1)
    tok = lm.tokenizer
    out: dict[int, list[LensLayer]] = {}
    for j, p in enumerate(positions):
        out[int(p)] = [LensLayer(li + 1, [Alternative(int(a), piece(tok, a), float(v))
                                          for a, v in zip(ti[j, li].tolist(), tv[j, li].tolist())])
                       for li in range(lp.shape[1])]
    return out
