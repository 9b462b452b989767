"""Where activation sparsity acts in a Llama-style decoder layer: its four projection inputs
(the module whose first input each one is, and the weights it feeds), the Top-K mask, and how a
forward pre-hook reads and replaces a module's input. Shared by the sparsity methods
(``act_sparsity.py``: magnitude and LaRoSA's rotated Top-K) and their calibration."""
from __future__ import annotations

from typing import Any

import torch

from engine.errors import InputError

#: the four sparsified inputs of a layer, what each feeds, and the module whose input it is
SITES = ("attn", "o", "mlp", "down")
SITE_PROJECTIONS = {"attn": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",),
                    "mlp": ("gate_proj", "up_proj"), "down": ("down_proj",)}
SITE_LABELS = {"attn": "q/k/v", "o": "o_proj", "mlp": "gate/up", "down": "down_proj"}
#: LaRoSA rotates the block inputs only (its reference code: plain Top-K before o_proj, down_proj)
ROTATED_SITES = ("attn", "mlp")


def _decoder_layers(model: Any) -> list[Any]:
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    layers = getattr(base, "layers", None)
    if layers is None:
        raise InputError("activation sparsity needs a decoder with .layers")
    return list(layers)


def layer_sites(model: Any) -> list[dict[str, Any]]:
    """Per decoder layer: the module whose (first) input is each site's activation."""
    out = []
    for layer in _decoder_layers(model):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        ok = attn is not None and mlp is not None and all(
            hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")) and all(
            hasattr(mlp, p) for p in ("gate_proj", "up_proj", "down_proj"))
        if not ok:
            raise InputError("activation sparsity needs Llama-style decoder layers (self_attn "
                             "with q/k/v/o_proj, mlp with gate/up/down_proj)")
        out.append({"attn": attn, "o": attn.o_proj, "mlp": mlp, "down": mlp.down_proj})
    return out


def mlp_modules(model: Any) -> list[Any]:
    """The decoder layers' MLP modules, in order."""
    return [s["mlp"] for s in layer_sites(model)]


def site_weights(model: Any) -> list[dict[str, int]]:
    """Per layer and site: how many weights the site's input is multiplied with (every
    projection it feeds), i.e. the weight reads one token's input costs there."""
    out = []
    for layer in _decoder_layers(model):
        parents = {"attn": layer.self_attn, "o": layer.self_attn, "mlp": layer.mlp,
                   "down": layer.mlp}
        out.append({s: sum(int(getattr(parents[s], p).weight.numel())
                           for p in SITE_PROJECTIONS[s]) for s in SITES})
    return out


def topk_mask(x: torch.Tensor, keep: int) -> torch.Tensor:
    """``x`` with all but the ``keep`` largest-|x| entries of the last dim set to zero."""
    if keep >= x.shape[-1]:
        return x
    if keep <= 0:
        return torch.zeros_like(x)
    idx = x.abs().topk(keep, dim=-1).indices
    return torch.zeros_like(x).scatter(-1, idx, x.gather(-1, idx))


def _first_input(args: tuple, kwargs: dict) -> tuple[torch.Tensor, Any]:
    """The activation a pre-hook sees, and how to hand back a replacement."""
    if args:
        return args[0], lambda y: ((y, *args[1:]), kwargs)
    key = next((k for k in ("hidden_states", "x", "input") if k in kwargs), None)
    if key is None:
        raise InputError("activation sparsity: cannot find the module's input")
    return kwargs[key], lambda y: (args, {**kwargs, key: y})
