"""One prompt (and an answer: given, or generated greedily) taken apart token by token: ids,
log-probabilities, entropy, alternatives, surprisal of the prompt's tokens and, on request, the
logit lens at every answer position. What ``tokenforge inspect`` prints."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from engine.errors import InputError
from engine.lm.chat import clean_text
from engine.lm.generate import generate
from engine.lm.logit_lens import LensLayer, logit_lens
from engine.lm.config import ChatConfig, SamplingConfig
from engine.lm.surprisal import ScoredToken, score_ids
from engine.lm.templates import encode_pieces, encode_user_text, split_chat
from engine.lm.tokeninfo import TokenRecorder
from engine.progress import CancelToken, check

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


@dataclass
class Inspection:
    """``tokens`` covers the whole templated context then the answer; ``part`` says which:
    'template', 'user' or 'answer'. ``lens`` maps a token index to its logit-lens table (the
    layers' guesses for the token at that index, read at the position before it)."""

    prompt: str
    response: str
    generated: bool
    tokens: list[ScoredToken]
    parts: list[str]
    lens: dict[int, list[LensLayer]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "response": self.response, "generated": self.generated,
                "tokens": [{**t.to_dict(), "part": p} for t, p in zip(self.tokens, self.parts)],
                "logit_lens": {str(i): [r.to_dict() for r in rows] for i, rows in self.lens.items()}}


def context_ids(lm: LoadedModel, prompt: str, system: Optional[str] = None) -> tuple[list[int], list[str]]:
    """The chat-templated context of one user message, and which part each token is."""
    msgs = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": clean_text(prompt)}]
    chat = split_chat(lm.tokenizer, msgs)
    ids: list[int] = []
    parts: list[str] = []
    for piece, piece_ids in zip(chat.pieces, encode_pieces(lm.tokenizer, chat)):
        ids += piece_ids
        parts += ["user" if piece.role == "user" else "template"] * len(piece_ids)
    return ids, parts


def inspect_text(lm: LoadedModel, prompt: str, response: Optional[str] = None, *,
                 system: Optional[str] = None, top_k: int = 5, lens: bool = False,
                 max_new_tokens: int = 64, cancel: Optional[CancelToken] = None) -> Inspection:
    """Score prompt + response in one pass; without a response, generate one greedily first
    (its per-token facts come from that decoding loop). A cancel raises Cancelled (between the
    generated tokens, or before the scoring pass)."""
    if not prompt or not prompt.strip():
        raise InputError("empty prompt: nothing to inspect")
    ChatConfig(prompt=prompt, system=system, response=response, alternatives=top_k).validate()
    ctx, parts = context_ids(lm, prompt, system)
    generated = response is None
    if generated:
        rec = TokenRecorder(lm.tokenizer, top_k)
        res, _ = generate(lm, ctx, SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0),
                          observe=rec, cancel=cancel)
        ans, response = list(res.token_ids), res.text
    else:
        ans = encode_user_text(lm.tokenizer, clean_text(response))
        if not ans:
            raise InputError("empty response: give text or leave --response out to generate one")
    check(cancel)
    scored = score_ids(lm, ctx + ans, top_k)
    out = Inspection(prompt, response, generated, scored, parts + ["answer"] * len(ans))
    if lens and ans:
        check(cancel)
        idx = list(range(len(ctx), len(ctx) + len(ans)))
        tables = logit_lens(lm, ctx + ans, [i - 1 for i in idx], top_k=max(1, top_k))
        out.lens = {i: tables[i - 1] for i in idx}
    return out
