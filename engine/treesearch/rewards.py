"""Rewards for tree search: a spec string → a scorer of completions, every value in [0, 1].

A reward sees the **completion only** (text and token ids; the prompt ids are given for
conditioning, never scored), so a long prompt cannot earn or lose reward. Specs:

    words:kitten,moon     fraction of the words present (case-insensitive, whole words)
    regex:PATTERN         1 if PATTERN matches anywhere in the completion, else 0
    answer:LABEL          1 if the last "Answer: X" line has X == LABEL (exact), else 0
    length:MIN-MAX        1 inside the window (words; MIN-MAXc for characters, MIN-MAXt for
                          tokens), outside it 1 - distance/MAX (at least 0), so search has a slope
    loglik:TARGET TEXT    exp(mean log p(TARGET | prompt, completion)) under the model
    plugin:module:func    func(text) -> float in [0, 1]: runs the user's own code, opt-in only

Errors in the spec raise :class:`InputError`; a reward that fails while scoring raises
:class:`RewardError` carrying its message, which the search turns into a clean partial stop.
"""
from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from engine.errors import EngineError, InputError

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

KINDS = ("words", "regex", "answer", "length", "loglik", "plugin")


class RewardError(EngineError):
    """The reward itself failed (raised, or returned something outside [0, 1])."""


@dataclass(frozen=True)
class Completion:
    """What a reward scores: the completion text and ids (EOS excluded), plus the prompt ids."""

    text: str
    token_ids: tuple[int, ...] = ()
    prompt_ids: tuple[int, ...] = ()


@dataclass
class Reward:
    """A parsed reward spec. ``runs_user_code`` is True for plugins, so front ends can say so."""

    kind: str
    spec: str
    description: str
    runs_user_code: bool = False
    _fn: Optional[Callable[[Completion], float]] = field(default=None, repr=False)

    def prepare(self, lm: LoadedModel, prompt_ids: Sequence[int]) -> None:
        """Bind to a model and prompt before scoring (only model-based rewards need it)."""

    def score(self, c: Completion) -> float:
        return self.score_many([c])[0]

    def score_many(self, items: Sequence[Completion]) -> list[float]:
        """Scores for several completions; RewardError (with the reward's message) on failure."""
        out = []
        for c in items:
            try:
                v = self._fn(c) if self._fn is not None else self._score(c)
            except RewardError:
                raise
            except Exception as e:  # the user's plugin or a pathological input
                raise RewardError(f"reward {self.spec!r} raised {type(e).__name__}: {e}") from e
            out.append(_checked(self.spec, v))
        return out

    def _score(self, c: Completion) -> float:  # pragma: no cover - every kind sets _fn or overrides
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": self.spec, "description": self.description,
                "runs_user_code": self.runs_user_code}


def _checked(spec: str, v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise RewardError(f"reward {spec!r} returned {v!r}, not a number") from None
    if not math.isfinite(x) or x < 0.0 or x > 1.0:
        raise RewardError(f"reward {spec!r} returned {x!r}; rewards must be in [0, 1]")
    return x


# ---------------------------------------------------------------- simple text rewards

def _words(arg: str, spec: str) -> Reward:
    words = [w.strip() for w in arg.split(",") if w.strip()]
    if not words:
        raise InputError("words: needs at least one word, e.g. words:kitten,moon")
    pats = [re.compile(r"(?<!\w)" + re.escape(w) + r"(?!\w)", re.IGNORECASE) for w in words]

    def fn(c: Completion) -> float:
        return sum(1 for p in pats if p.search(c.text)) / len(pats)

    return Reward("words", spec, f"fraction of {len(words)} word(s) present: {', '.join(words)}",
                  _fn=fn)


def _regex(arg: str, spec: str) -> Reward:
    if not arg:
        raise InputError("regex: needs a pattern, e.g. regex:\\bmoon\\b")
    try:
        pat = re.compile(arg)
    except re.error as e:
        raise InputError(f"invalid regex {arg!r}: {e}") from None

    def fn(c: Completion) -> float:
        return 1.0 if pat.search(c.text) else 0.0

    return Reward("regex", spec, f"1 if /{arg}/ matches the completion", _fn=fn)


_ANSWER = re.compile(r"answer\s*:\s*(.+)", re.IGNORECASE)


def extract_answer(text: str) -> Optional[str]:
    """X from the last "Answer: X" in the text (markdown bold and a final period stripped)."""
    found = _ANSWER.findall(text)
    if not found:
        return None
    x = found[-1].strip().strip("*_`").strip()
    return x[:-1].rstrip() if x.endswith(".") else x


def _answer(arg: str, spec: str) -> Reward:
    label = arg.strip()
    if not label:
        raise InputError("answer: needs a label, e.g. answer:42")

    def fn(c: Completion) -> float:
        return 1.0 if extract_answer(c.text) == label else 0.0

    return Reward("answer", spec, f"1 if the completion says 'Answer: {label}'", _fn=fn)


_LENGTH = re.compile(r"^\s*(\d+)\s*-\s*(\d+)\s*([wct]?)\s*$")


def _length(arg: str, spec: str) -> Reward:
    m = _LENGTH.match(arg)
    if not m:
        raise InputError(f"length: expects MIN-MAX (e.g. length:20-40, 20-40c chars, 20-40t tokens), "
                         f"got {arg!r}")
    lo, hi, unit = int(m.group(1)), int(m.group(2)), m.group(3) or "w"
    if lo > hi:
        raise InputError(f"length: MIN {lo} is above MAX {hi}")
    name = {"w": "words", "c": "characters", "t": "tokens"}[unit]
    span = max(hi, 1)

    def fn(c: Completion) -> float:
        n = (len(c.text.split()) if unit == "w" else len(c.text) if unit == "c" else len(c.token_ids))
        d = lo - n if n < lo else n - hi if n > hi else 0
        return max(0.0, 1.0 - d / span)

    return Reward("length", spec, f"1 for {lo}-{hi} {name}, less outside", _fn=fn)


# ---------------------------------------------------------------- model log-likelihood

class LoglikReward(Reward):
    """exp(mean log p(target | prompt, completion)) under the raw model (temperature 1).

    The prompt is prefilled once in :meth:`prepare`; each call scores a batch of completions
    from a fork of that cache, right-padded (pads after the scored tokens cannot affect them)."""

    def __init__(self, spec: str, target: str) -> None:
        super().__init__("loglik", spec, f"exp(mean log-likelihood) of {target!r} after the completion")
        self.target = target
        self._lm: Optional[LoadedModel] = None
        self._prompt_cache: Any = None
        self._target_ids: list[int] = []

    def prepare(self, lm: LoadedModel, prompt_ids: Sequence[int]) -> None:
        from engine.lm.forward import get_forward
        import torch

        self._lm = lm
        self._target_ids = list(lm.tokenizer.encode(self.target, add_special_tokens=False))
        if not self._target_ids:
            raise InputError("loglik: the target encodes to no tokens")
        fwd = get_forward(lm, exact=True)
        cache = fwd.new_cache()
        ids = list(prompt_ids)
        if len(ids) > 1:
            fwd.logits(torch.tensor([ids[:-1]], device=lm.torch_device), cache, keep=1)
        self._prompt_cache = cache
        self._last_prompt = ids[-1] if ids else None

    def score_many(self, items: Sequence[Completion]) -> list[float]:
        if self._lm is None:
            raise RewardError("loglik reward used before prepare(lm, prompt_ids)")
        try:
            return [_checked(self.spec, v) for v in self._batch(items)]
        except RewardError:
            raise
        except EngineError:
            raise
        except Exception as e:
            raise RewardError(f"reward {self.spec!r} raised {type(e).__name__}: {e}") from e

    def _batch(self, items: Sequence[Completion]) -> list[float]:
        import torch
        from engine.lm.forward import get_forward

        lm, fwd = self._lm, get_forward(self._lm, exact=True)
        out: list[float] = []
        tgt = self._target_ids
        for start in range(0, len(items), 16):
            chunk = items[start:start + 16]
            seqs = [([self._last_prompt] if self._last_prompt is not None else []) + list(c.token_ids) + tgt
                    for c in chunk]
            width = max(len(s) for s in seqs)
            if fwd.cache_len(self._prompt_cache) + width > lm.context_length:
                raise RewardError("loglik: prompt + completion + target exceed the context length")
            ids = torch.zeros((len(seqs), width), dtype=torch.long, device=lm.torch_device)
            for i, s in enumerate(seqs):
                ids[i, :len(s)] = torch.tensor(s)
            cache = fwd.fork(self._prompt_cache) if fwd.cache_len(self._prompt_cache) else fwd.new_cache()
            if len(seqs) > 1 and fwd.cache_len(cache):
                cache = fwd.repeat(cache, len(seqs))
            logp = fwd.logits(ids, cache, keep=0).log_softmax(-1)
            for i, s in enumerate(seqs):
                # logits at position j predict token j+1; the target occupies the last len(tgt)
                first = len(s) - len(tgt)
                rows = logp[i, first - 1:len(s) - 1]
                lp = rows.gather(-1, torch.tensor(tgt, device=rows.device).view(-1, 1)).mean()
                out.append(float(torch.exp(lp)))
        return out


# ---------------------------------------------------------------- user plugin

def _plugin(arg: str, spec: str, allow: bool) -> Reward:
    if not allow:
        raise InputError("plugin rewards run your own Python code: pass --allow-plugin to enable them",
                         hint="only use plugins you trust")
    mod_name, sep, fn_name = arg.rpartition(":")
    if not sep or not mod_name or not fn_name:
        raise InputError(f"plugin: expects module:function, got {arg!r}")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:
        raise InputError(f"plugin: cannot import {mod_name!r}: {type(e).__name__}: {e}") from None
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        raise InputError(f"plugin: {mod_name!r} has no function {fn_name!r}")

    def call(c: Completion) -> float:
        return fn(c.text)

    return Reward("plugin", spec, f"user code {mod_name}.{fn_name}(text) (runs your own code)",
                  runs_user_code=True, _fn=call)


def parse_reward(spec: str, *, allow_plugin: bool = False) -> Reward:
    """Parse ``kind:argument``; InputError with one clear message for anything malformed."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("empty reward spec", hint=f"one of: {', '.join(k + ':…' for k in KINDS)}")
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in KINDS:
        raise InputError(f"unknown reward spec {spec!r}",
                         hint="use words:a,b · regex:PATTERN · answer:LABEL · length:MIN-MAX · "
                              "loglik:TARGET · plugin:module:function")
    if kind == "words":
        return _words(arg, spec)
    if kind == "regex":
        return _regex(arg, spec)
    if kind == "answer":
        return _answer(arg, spec)
    if kind == "length":
        return _length(arg, spec)
    if kind == "loglik":
        if not arg.strip():
            raise InputError("loglik: needs a target text, e.g. loglik:The end.")
        return LoglikReward(spec, arg)
    return _plugin(arg.strip(), spec, allow_plugin)
