"""Logits processing and token choice, separate from the decoding loop (as transformers separates
its logits processors from ``generate``): the loop asks ``choose(logits)`` and nothing else."""
from __future__ import annotations

from typing import Optional

import torch

from engine.lm.config import SamplingConfig


def make_generator(seed: Optional[int], device: torch.device | str = "cpu") -> Optional[torch.Generator]:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def nucleus(x: torch.Tensor, top_p: float, start: int = 256
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-p nucleus of each row of (…, V) logits without sorting the vocabulary: a top-k
    slice, widened ×4 until its mass reaches ``top_p`` in every row (a full sort of 49K logits per
    row per step cost more than the forward at batch 16). Returns the slice's values (sorted,
    descending), their ids, their probabilities under the full softmax, and ``keep``: the smallest
    prefix whose mass reaches ``top_p`` (always at least one token)."""
    v = x.shape[-1]
    lse = torch.logsumexp(x, -1, keepdim=True)
    kk = min(v, start)
    while True:
        sx, idx = torch.topk(x, kk, dim=-1)
        p = (sx - lse).exp()
        cum = p.cumsum(-1)
        if kk == v or bool((cum[..., -1] >= top_p).all()):
            break
        kk = min(v, kk * 4)
    keep = (cum - p) < top_p  # the mass before this token has not reached p yet
    keep[..., 0] = True
    return sx, idx, p, keep


def _tempered_top_k(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature, then top-k (entries below the k-th become -inf)."""
    x = logits / max(cfg.temperature, 1e-6)
    if cfg.top_k and cfg.top_k < x.shape[-1]:
        kth = torch.topk(x, cfg.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    return x


def process(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature, top-k and top-p on (B, V) fp32 logits; filtered entries become -inf.
    Top-p keeps the smallest set whose mass reaches p, and always at least one token."""
    x = _tempered_top_k(logits, cfg)
    if cfg.top_p < 1.0:
        sx, idx, _, keep = nucleus(x, cfg.top_p)
        x = torch.full_like(x, float("-inf")).scatter(-1, idx, sx.masked_fill(~keep, float("-inf")))
    return x


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    g = logits.gather(-1, seen)
    g = torch.where(g > 0, g / penalty, g * penalty)
    return logits.scatter(-1, seen, g)


def choose(logits: torch.Tensor, cfg: SamplingConfig, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Next token ids (B,) from (B, V) fp32 logits."""
    if cfg.greedy:
        return logits.argmax(-1)
    if cfg.top_p < 1.0:  # draw within the nucleus only: same distribution, a fraction of the work
        _, idx, p, keep = nucleus(_tempered_top_k(logits, cfg), cfg.top_p)
        j = torch.multinomial((p * keep).view(-1, p.shape[-1]), 1, generator=generator)
        return idx.view(-1, idx.shape[-1]).gather(-1, j).view(idx.shape[:-1])
    probs = process(logits, cfg).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
