"""A tree of answers to one context: force a different token at position p and continue, or
regenerate; every variant is kept and can be shown again.

Why it is cheap: each branch keeps its KV cache (context + its answer but the last token). A
branch forced at position p forks its parent's cache at context + p — a view, no re-encoding —
feeds only the forced token and decodes the new suffix. Regenerating forks the context cache.

Variants at a position: the branches that share the answer up to p and differ from there are
one group, shown as "< i/n >": the branch that owned position p, plus every branch forked from
it at p. Branches at position 0 (regenerations, or a forced first token) are all roots.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

from engine.errors import InputError
from engine.lm.forward import get_forward
from engine.lm.generate import TokenCallback, generate
from engine.lm.results import GenerationResult
from engine.lm.config import SamplingConfig
from engine.lm.tokeninfo import TokenInfo, TokenRecorder, find_alternative, infos_from_logits
from engine.progress import CancelToken, ProgressFn

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


@dataclass
class Branch:
    """One answer. ``token_ids`` is the whole answer (the part before ``fork_at`` is its
    parent's); ``cache`` holds context + token_ids[:-1]."""

    id: int
    parent: Optional[int]
    fork_at: int
    token_ids: list[int]
    infos: list[TokenInfo]
    result: Optional[GenerationResult]
    cache: Any = field(repr=False, default=None)
    text: str = ""

    @property
    def forced(self) -> bool:
        return self.parent is not None or bool(self.infos and self.infos[0].forced)


class AnswerTree:
    """Branches over one context. ``context_cache`` holds the context's first ``len(context)
    - 1`` or more tokens (it is forked, never extended); ``context`` is every context id."""

    def __init__(self, lm: LoadedModel, context: Sequence[int], context_cache: Any, cfg: SamplingConfig,
                 top_k: int = 5) -> None:
        if not context:
            raise InputError("an answer tree needs a context of at least one token")
        self.lm = lm
        self.fwd = get_forward(lm)
        self.context = [int(i) for i in context]
        self.base = context_cache
        self.cfg = cfg
        self.top_k = top_k
        self.branches: list[Branch] = []

    @property
    def n_context(self) -> int:
        return len(self.context)

    # -- making branches ----------------------------------------------------------------------
    def add_existing(self, token_ids: Sequence[int], infos: Sequence[TokenInfo],
                     result: Optional[GenerationResult], cache: Any) -> Branch:
        """Adopt an answer generated elsewhere (a chat turn) as a root branch."""
        b = Branch(len(self.branches), None, 0, list(token_ids), list(infos), result, cache,
                   result.text if result is not None else self._decode(token_ids))
        self.branches.append(b)
        return b

    def _decode(self, ids: Sequence[int]) -> str:
        return self.lm.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _run(self, cache: Any, feed: list[int], budget: int, on_token: Optional[TokenCallback],
             progress: Optional[ProgressFn], cancel: Optional[CancelToken]
             ) -> tuple[GenerationResult, Any, list[TokenInfo]]:
        rec = TokenRecorder(self.lm.tokenizer, self.top_k)
        cfg = SamplingConfig(**{**self.cfg.__dict__, "max_new_tokens": max(1, budget)})
        res, cache = generate(self.lm, feed, cfg, cache=cache, on_token=on_token,
                              progress=progress, cancel=cancel, observe=rec)
        return res, cache, rec.infos

    def generate_root(self, *, on_token: Optional[TokenCallback] = None,
                      progress: Optional[ProgressFn] = None,
                      cancel: Optional[CancelToken] = None) -> Branch:
        """A new answer from the context (regenerate): a root branch."""
        n = self.n_context
        have = min(self.fwd.cache_len(self.base), n - 1)
        cache = self.fwd.fork(self.base, keep=have)
        res, cache, infos = self._run(cache, self.context[have:], self.cfg.max_new_tokens,
                                      on_token, progress, cancel)
        b = Branch(len(self.branches), None, 0, list(res.token_ids), infos, res, cache, res.text)
        self.branches.append(b)
        return b

    def _forced_info(self, src: Branch, p: int, token: int) -> TokenInfo:
        """The forced token's facts from the logits already seen at p; when it is not among the
        kept alternatives, one single-token forward gives that position's row."""
        info = src.infos[p] if p < len(src.infos) else None
        alt = find_alternative(info, token) if info is not None else None
        if info is not None and alt is not None:
            rank = info.alternatives.index(alt) + 1
            return TokenInfo(int(token), alt.text, alt.logprob, info.entropy,
                             list(info.alternatives), rank, forced=True)
        n = self.n_context + p
        prev = self.context[-1] if p == 0 else src.token_ids[p - 1]
        cache = self.fwd.fork(src.cache, keep=n - 1)
        row = self.fwd.logits(torch.tensor([[prev]], device=self.lm.torch_device), cache, keep=1)[0]
        got = infos_from_logits(row, [int(token)], self.lm.tokenizer, self.top_k)[0]
        got.forced = True
        return got

    def force(self, branch_id: int, p: int, token: int, *, on_token: Optional[TokenCallback] = None,
              progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None) -> Branch:
        """Put ``token`` at answer position ``p`` of branch ``branch_id`` and continue from it.
        Only the forced token and the new suffix go through the model."""
        src = self.get(branch_id)
        if not (0 <= p < len(src.token_ids)):
            raise InputError(f"position {p} is outside the answer's {len(src.token_ids)} tokens")
        token = int(token)
        vocab = self.lm.model.config.vocab_size
        if not (0 <= token < vocab):
            raise InputError(f"token id {token} is outside the vocabulary (0–{vocab - 1})")
        info = self._forced_info(src, p, token)
        cache = self.fwd.fork(src.cache, keep=self.n_context + p)
        budget = self.cfg.max_new_tokens - p - 1
        prefix = src.token_ids[:p] + [token]
        parent = self._group_parent(src, p)
        if token in set(self.lm.eos_ids) or budget < 1:
            res = None
            ids, infos, text = prefix, src.infos[:p] + [info], self._decode(prefix)
        else:
            res, cache, tail = self._run(cache, [token], budget, on_token, progress, cancel)
            ids, infos = prefix + list(res.token_ids), src.infos[:p] + [info] + tail
            text = self._decode(ids)
        b = Branch(len(self.branches), parent, p, ids, infos, res, cache, text)
        self.branches.append(b)
        return b

    # -- navigating ---------------------------------------------------------------------------
    def get(self, branch_id: int) -> Branch:
        if not (0 <= branch_id < len(self.branches)):
            raise InputError(f"no branch {branch_id}")
        return self.branches[branch_id]

    def owner(self, b: Branch, p: int) -> Branch:
        """The branch whose own decoding produced position p of ``b``."""
        while b.parent is not None and b.fork_at > p:
            b = self.branches[b.parent]
        return b

    def _group_parent(self, b: Branch, p: int) -> Optional[int]:
        if p == 0:
            return None
        q = self.owner(b, p)
        if q.fork_at == p and q.parent is not None:
            return q.parent
        return q.id

    def variants(self, branch_id: int, p: int) -> list[int]:
        """Branch ids that share ``branch_id``'s answer before p and differ at p, oldest first."""
        b = self.get(branch_id)
        parent = self._group_parent(b, p)
        if parent is None:
            return [x.id for x in self.branches if x.parent is None]
        kids = [x.id for x in self.branches if x.parent == parent and x.fork_at == p]
        return [parent] + kids

    def fork_points(self, branch_id: int) -> list[int]:
        """Positions of the branch where other variants exist."""
        b = self.get(branch_id)
        cand = {x.fork_at for x in self.branches if x.parent is not None}
        if sum(1 for x in self.branches if x.parent is None) > 1:
            cand.add(0)
        return sorted(p for p in cand if p < len(b.token_ids) and len(self.variants(b.id, p)) > 1)

    def step(self, branch_id: int, p: int, delta: int) -> int:
        """The previous (-1) / next (+1) variant at p, wrapping around."""
        v = self.variants(branch_id, p)
        here = self.owner(self.get(branch_id), p).id
        i = v.index(here) if here in v else (v.index(branch_id) if branch_id in v else 0)
        return v[(i + delta) % len(v)]

    def label(self, branch_id: int, p: int) -> str:
        """'< i/n >' for the variants at p."""
        v = self.variants(branch_id, p)
        here = self.owner(self.get(branch_id), p).id
        i = v.index(here) + 1 if here in v else 1
        return f"< {i}/{len(v)} >"


def show_in_session(session: Any, tree: AnswerTree, branch_id: int) -> None:
    """Make branch ``branch_id`` the last answer of a ChatSession (whose last turn the tree was
    built over): its cache (a fork), its ids, its text. The next message continues from it."""
    b = tree.get(branch_id)
    if not session.turns:
        raise InputError("the conversation has no answer to replace")
    turn = session.turns[-1]
    session.cache = tree.fwd.fork(b.cache)
    session.ids = list(tree.context) + list(b.token_ids)
    turn.answer, turn.answer_ids = b.text, list(b.token_ids)
    if b.result is not None:
        turn.result = b.result


def tree_from_session(session: Any, infos: Sequence[TokenInfo], top_k: int = 5,
                      cfg: Optional[SamplingConfig] = None) -> AnswerTree:
    """An AnswerTree over a ChatSession's last turn, its answer adopted as the first root. The
    tree keeps a fork of the session's cache: the next message extends the session's own."""
    if not session.turns or session.cache is None:
        raise InputError("send a message first")
    turn = session.turns[-1]
    n = len(session.ids) - len(turn.answer_ids)
    cache = session.fwd.fork(session.cache)
    tree = AnswerTree(session.lm, session.ids[:n], cache, cfg or session.sampling, top_k)
    tree.add_existing(turn.answer_ids, infos, turn.result, cache)
    return tree
