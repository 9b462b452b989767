"""Per-token facts for the token explorer: id, log-probability, entropy and the top-k
alternatives, all read from logits that were already computed (the decoding loop's step logits,
or one scoring pass) — never from an extra forward.

The probabilities are the model's own distribution (log_softmax of the raw logits), not the
sampling policy after temperature/top-p: what the user asks is "how likely did the model find
this token", and that does not change with the sampler's settings."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch


@dataclass
class Alternative:
    """One candidate at a position: token id, its text piece and log-probability."""

    id: int
    text: str
    logprob: float


@dataclass
class TokenInfo:
    """One position. ``logprob`` of the token that stands there; ``entropy`` of the whole
    next-token distribution there (nats); ``alternatives`` the top-k under that distribution
    (which may include the token itself); ``forced`` when the user chose it."""

    id: int
    text: str
    logprob: float
    entropy: float
    alternatives: list[Alternative] = field(default_factory=list)
    rank: int = 0  # 1-based rank of the token among the alternatives; 0 = not in the top-k
    forced: bool = False

    @property
    def prob(self) -> float:
        import math

        return math.exp(self.logprob)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def piece(tokenizer: Any, tid: int) -> str:
    """The text a single token stands for (a multi-byte character split over tokens shows as
    the replacement character, which is what that token alone is)."""
    return tokenizer.decode([int(tid)], skip_special_tokens=False)


def infos_from_logits(logits: torch.Tensor, ids: list[int], tokenizer: Any, top_k: int = 5
                      ) -> list[TokenInfo]:
    """TokenInfo for each row of (T, V) logits, row t predicting ``ids[t]``. One log_softmax and
    one top-k over all rows together."""
    if logits.dim() != 2 or logits.shape[0] != len(ids):
        raise ValueError(f"logits {tuple(logits.shape)} do not match {len(ids)} ids")
    if not ids:
        return []
    lp = torch.log_softmax(logits.float(), dim=-1)
    ent = -(lp.exp() * lp).nan_to_num().sum(-1)
    tid = torch.tensor(ids, dtype=torch.long, device=lp.device).view(-1, 1)
    own = lp.gather(-1, tid).squeeze(-1)
    k = max(0, min(int(top_k), lp.shape[-1]))
    if k:
        tv, ti = torch.topk(lp, k, dim=-1)
        tv, ti = tv.tolist(), ti.tolist()
    else:
        tv = ti = [[] for _ in ids]
    out = []
    for t, token in enumerate(ids):
        alts = [Alternative(int(a), piece(tokenizer, a), float(v)) for a, v in zip(ti[t], tv[t])]
        rank = next((j + 1 for j, a in enumerate(alts) if a.id == token), 0)
        out.append(TokenInfo(int(token), piece(tokenizer, token), float(own[t]), float(ent[t]),
                             alts, rank))
    return out


class TokenRecorder:
    """The decoding loop's ``observe`` callback: keeps one TokenInfo per generated token from
    the step's logits. The top-k and log_softmax are cheap next to a forward (a 49K-row top-k);
    text pieces are decoded only when read, so the loop pays for tensors only."""

    def __init__(self, tokenizer: Any, top_k: int = 5) -> None:
        self.tokenizer = tokenizer
        self.top_k = int(top_k)
        self._rows: list[tuple[int, float, float, list[int], list[float]]] = []
        self._cache: list[TokenInfo] = []

    def __call__(self, logits: torch.Tensor, token: int) -> None:
        row = logits.reshape(-1)
        lp = torch.log_softmax(row.float(), dim=-1)
        ent = float(-(lp.exp() * lp).nan_to_num().sum())
        own = float(lp[int(token)])
        if self.top_k:
            tv, ti = torch.topk(lp, min(self.top_k, lp.numel()))
            alts_i, alts_v = ti.tolist(), tv.tolist()
        else:
            alts_i, alts_v = [], []
        self._rows.append((int(token), own, ent, alts_i, alts_v))

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def infos(self) -> list[TokenInfo]:
        tok = self.tokenizer
        for token, own, ent, ai, av in self._rows[len(self._cache):]:
            alts = [Alternative(a, piece(tok, a), v) for a, v in zip(ai, av)]
            rank = next((j + 1 for j, a in enumerate(alts) if a.id == token), 0)
            self._cache.append(TokenInfo(token, piece(tok, token), own, ent, alts, rank))
        return list(self._cache)


def find_alternative(info: TokenInfo, token: int) -> Optional[Alternative]:
    return next((a for a in info.alternatives if a.id == int(token)), None)
