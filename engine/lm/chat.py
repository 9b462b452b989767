"""A multi-turn conversation over one growing KV cache.

The system prompt is encoded once (and its cache kept, so a new conversation reuses it); each
turn feeds only the template glue + the new user message; the assistant's tokens stay in the
cache; history is never re-encoded — except once when the next turn would overflow the context,
when the oldest turns are dropped and the kept ones re-encoded from the system cache.

Template glue comes from the one chat-template splitter (``engine/lm/templates.split_chat``), so
any family works (ChatML, Llama-3, Gemma, Mistral, …) without a per-family table, and a tokenizer
without a template gets the documented plain format. Cached token ids are the truth: the
conversation is never re-tokenized from text.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from engine.errors import ContextOverflow, InputError
from engine.lm.forward import get_forward
from engine.lm.generate import LogitsObserver, TokenCallback, generate
from engine.lm.results import GenerationResult
from engine.lm.prefill import prefill
from engine.lm.templates import TurnGlue, chat_ids, encode_user_text, turn_glue
from engine.progress import CancelToken, ProgressFn, check
from engine.lm.config import SamplingConfig

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

@dataclass
class Turn:
    user: str
    user_ids: list[int]
    answer: str = ""
    answer_ids: list[int] = field(default_factory=list)
    result: Optional[GenerationResult] = None


def clean_text(text: str) -> str:
    """Make user text safe to encode: lone surrogates replaced, NUL and other C0 controls
    (except tab/newline) dropped. Emoji and combining characters pass through unchanged."""
    text = text.encode("utf-8", "replace").decode("utf-8") if _has_surrogates(text) else text
    return "".join(ch for ch in text if ch in "\t\n\r" or not (ord(ch) < 32 or ord(ch) == 127))


def _has_surrogates(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


class ChatSession:
    """Multi-turn chat with a conversation KV cache. Not thread-safe: one job at a time."""

    def __init__(self, lm: LoadedModel, system: Optional[str] = None,
                 sampling: Optional[SamplingConfig] = None) -> None:
        self.lm = lm
        self.sampling = sampling or SamplingConfig()
        self.started_at = time.time()  # the export's start time
        self.fwd = get_forward(lm)
        self.turns: list[Turn] = []
        self.reset(system)

    # -- conversation state -------------------------------------------------------------------
    def reset(self, system: Optional[str] = ...) -> None:  # type: ignore[assignment]
        """Start a new conversation; keep the system cache when the system prompt is unchanged."""
        if system is not ...:
            system = clean_text(system).strip() if system else None
            if getattr(self, "system", object()) != system or not hasattr(self, "_sys_cache"):
                self.system = system
                self._glue: dict[int, TurnGlue] = {}
                self._sys_cache = None
                self._sys_ids: list[int] = []
        self.turns = []
        self.dropped: list[Turn] = []  # old turns dropped to fit the context (kept for export)
        self.cache = None
        self.ids: list[int] = []  # every conversation token, in order (the cache holds a prefix)

    def _restore(self, prev: tuple) -> None:
        """Put back the state ``send`` found (turns, ids, cache): the cache may have been
        extended in place by a partial prefill, so it is cut back to the length it had."""
        turns, ids, cache, length, dropped = prev
        self.turns, self.ids, self.dropped = turns, ids, dropped
        if self.fwd.cache_len(cache) > length:
            cache = self.fwd.fork(cache, keep=length)
        self.cache = cache

    def _system_cache(self, progress: Optional[ProgressFn] = None,
                      cancel: Optional[CancelToken] = None) -> Any:
        """Encode the text before the first user turn once; later conversations fork it. A long
        system prompt is prefilled in chunks (cancellable); a cancel keeps nothing."""
        if self._sys_cache is None:
            sys_ids = self._prefix_ids()
            cache = self.fwd.new_cache()
            if sys_ids:
                import torch

                ids = torch.tensor([sys_ids], device=self.lm.torch_device)
                prefill(self.fwd, ids, cache, progress=progress, cancel=cancel)
            self._sys_ids = sys_ids
            self._sys_cache = cache
        return self._sys_cache

    def glue(self, i: int) -> TurnGlue:
        """The template text around user turn ``i`` (computed once per turn index)."""
        if i not in self._glue:
            self._glue[i] = turn_glue(self.lm.tokenizer, self.system, i)
        return self._glue[i]

    @property
    def warning(self) -> str:
        """The splitter's warning (no template, no system role), '' when none."""
        return self.glue(0).warning

    def _prefix_ids(self) -> list[int]:
        """Everything before the first user message (system prompt included): the system cache."""
        return chat_ids(self.lm.tokenizer, self.glue(0).prefix)

    def _turn_ids(self, i: int, turn: Turn, with_answer: bool) -> list[int]:
        """Turn i's template text and message, encoded as the template's own tokenization
        encodes them (``engine/lm/templates.chat_ids``), then the answer's generated ids."""
        ids = chat_ids(self.lm.tokenizer, self.glue(i).turn(turn.user))
        if with_answer:
            ids += turn.answer_ids
        return ids

    def _rebuild(self, turns: list[Turn]) -> list[int]:
        self._system_cache()
        ids = list(self._sys_ids)
        for i, t in enumerate(turns):
            ids += self._turn_ids(i, t, with_answer=True)
        return ids

    @property
    def messages(self) -> list[dict[str, str]]:
        out = [{"role": "system", "content": self.system}] if self.system else []
        for t in self.turns:
            out.append({"role": "user", "content": t.user})
            if t.result is not None:
                out.append({"role": "assistant", "content": t.answer})
        return out

    # -- one turn -----------------------------------------------------------------------------
    def send(self, text: str, *, on_token: Optional[TokenCallback] = None,
             progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None,
             sampling: Optional[SamplingConfig] = None,
             observe: Optional[LogitsObserver] = None) -> GenerationResult:
        """Answer ``text``. Only the new tokens are prefilled. A cancel returns the partial
        answer (stop_reason 'cancelled'), which stays in the conversation — unless it came before
        the first answer token (``result.discarded``): then the session is as it was. A refused
        or failed message leaves the session unchanged too."""
        cfg = (sampling or self.sampling).validate(self.lm.context_length)
        if text is None or not str(text).strip():
            raise InputError("empty message: type something first")
        text = clean_text(str(text))
        check(cancel)
        sys_cache = self._system_cache(progress, cancel)
        if self.cache is None:
            self.cache = self.fwd.fork(sys_cache)
            self.ids = list(self._sys_ids)
        turn = Turn(user=text, user_ids=encode_user_text(self.lm.tokenizer, text))
        new_ids = self._turn_ids(len(self.turns), turn, with_answer=False)
        ctx = self.lm.context_length
        # everything below is decided before the session changes: a refused message (too long
        # even without history) leaves turns, ids and cache exactly as they were
        alone = len(self._sys_ids) + len(self._turn_ids(0, turn, with_answer=False))
        if alone + cfg.max_new_tokens > ctx:
            raise ContextOverflow(
                f"message is {len(turn.user_ids)} tokens; with the system prompt "
                f"({len(self._sys_ids)}) and max_new_tokens ({cfg.max_new_tokens}) that exceeds the "
                f"context of {ctx} tokens" + (" even without history" if self.turns else ""))
        prev = (self.turns, self.ids, self.cache, self.fwd.cache_len(self.cache), list(self.dropped))
        kept, ids, cache, dropped = self.turns, self.ids, self.cache, 0
        notes: list[str] = []
        if len(ids) + len(new_ids) + cfg.max_new_tokens > ctx:
            # drop the oldest turns until the kept ones + this turn fit (the message alone fits,
            # checked above, so this ends); re-encode once from the system cache
            kept = list(self.turns)
            while kept:
                kept.pop(0)
                dropped += 1
                trial = self._rebuild(kept) + self._turn_ids(len(kept), turn, with_answer=False)
                if len(trial) + cfg.max_new_tokens <= ctx:
                    break
            ids = self._rebuild(kept)
            cache = self.fwd.fork(sys_cache)
            new_ids = self._turn_ids(len(kept), turn, with_answer=False)
            notes.append(f"context full: dropped the {dropped} oldest turn(s) and re-encoded "
                         f"{len(ids) - len(self._sys_ids)} history tokens once")
        cached = self.fwd.cache_len(cache)
        feed = ids[cached:] + new_ids  # uncached conversation tail + this turn
        try:
            result, cache = generate(self.lm, feed, cfg, cache=cache, on_token=on_token,
                                     progress=progress, cancel=cancel,
                                     prompt_tokens=cached + len(feed), observe=observe)
        except BaseException:
            self._restore(prev)
            raise
        if result.stop_reason == "cancelled" and not result.token_ids:
            # stopped before the answer began (during the prefill): the message is not added and
            # nothing is dropped; the caller gives the text back to the user
            self._restore(prev)
            result.discarded = True
            result.notes.append("stopped before the answer began: the message was not added")
            return result
        self.dropped.extend(self.turns[:dropped])
        self.turns, self.cache = list(kept), cache
        # cache now holds everything fed + all generated tokens but the last
        self.ids = ids + new_ids + result.token_ids
        turn.answer, turn.answer_ids, turn.result = result.text, list(result.token_ids), result
        self.turns.append(turn)
        result.dropped_turns = dropped
        result.notes.extend(notes)
        if self.warning:
            result.notes.append(self.warning)
        return result

    def regenerate(self, *, on_token: Optional[TokenCallback] = None,
                   progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None,
                   sampling: Optional[SamplingConfig] = None,
                   observe: Optional[LogitsObserver] = None) -> GenerationResult:
        """Drop the last answer and answer the last user message again.

        The conversation is rolled back to just before the last turn: the cache is forked at
        that length (a view, no re-encoding) and ``ids``/``turns`` trimmed, then the message is
        sent again, so only that turn's tokens are prefilled."""
        if not self.turns or self.cache is None:
            raise InputError("nothing to regenerate: send a message first")
        (sampling or self.sampling).validate(self.lm.context_length)  # refuse before rolling back
        last = self.turns[-1]
        i = len(self.turns) - 1
        start = len(self.ids) - len(last.answer_ids) - len(self._turn_ids(i, last, with_answer=False))
        if start < len(self._sys_ids):  # ids out of step with the turns: never expected
            raise InputError("cannot regenerate: conversation state is inconsistent; start a new chat")
        check(cancel)
        prev = (self.turns, self.ids, self.cache, self.fwd.cache_len(self.cache), list(self.dropped))
        self.cache = self.fwd.fork(self.cache, keep=min(start, self.fwd.cache_len(self.cache)))
        self.ids = self.ids[:start]
        self.turns = self.turns[:-1]
        try:
            result = self.send(last.user, on_token=on_token, progress=progress, cancel=cancel,
                               sampling=sampling, observe=observe)
        except BaseException:
            self._restore(prev)  # a failed regenerate keeps the old answer
            raise
        if result.discarded:  # stopped before the new answer began: the old one stays
            self._restore(prev)
        return result

    def restore(self, turns: list[Turn], ids: list[int], cache: Any = None) -> None:
        """Continue a saved conversation: ``turns`` and their live token ``ids`` (system prefix
        first), and optionally a KV ``cache`` holding a prefix of ``ids`` (a snapshot). Without
        one, the next send prefills the history once."""
        sys_ids = self._prefix_ids()
        if list(ids[:len(sys_ids)]) != sys_ids:
            raise InputError("the saved conversation does not start with this system prompt")
        self._sys_ids = sys_ids
        if cache is not None:
            n = self.fwd.cache_len(cache)
            if n > len(ids) or n < len(sys_ids):
                raise InputError(f"a cache of {n} positions does not fit {len(ids)} saved tokens")
            self._sys_cache = self.fwd.fork(cache, keep=len(sys_ids)) if sys_ids else self.fwd.new_cache()
        self.turns = list(turns)
        self.dropped = []
        self.ids = list(ids)
        self.cache = cache if cache is not None else self.fwd.fork(self._system_cache())

    # -- export ---------------------------------------------------------------------------------
    def to_markdown(self) -> str:
        lines = [f"# Conversation with {self.lm.name}", ""]
        if self.system:
            lines += ["**System:** " + self.system, ""]
        for t in self.dropped + self.turns:
            if t in self.dropped:
                lines += ["_(dropped from the model's context to fit a later message)_", ""]
            lines += ["**User:** " + t.user, "", "**Assistant:** " + t.answer, ""]
            if t.result is not None:
                r = t.result
                lines += [f"_{r.new_tokens} tokens · TTFT {r.ttft_s:.2f} s · {r.decode_tok_s:.1f} tok/s"
                          f" · stop: {r.stop_reason}_", ""]
        from engine.inert import printable  # a Markdown file is read in terminals too

        return printable("\n".join(lines), multiline=True)

    def to_json(self) -> str:
        """The conversation in the one export envelope (engine/export.py): kind "chat", the
        system prompt and sampling as its settings, the turns (dropped ones marked) as result."""
        from engine.export import job_document

        doc = job_document(
            "chat",
            {"turns": [{"user": t.user, "assistant": t.answer,
                        "metrics": t.result.to_dict() if t.result else None,
                        **({"dropped": True} if dropped else {})}
                       for dropped, ts in ((True, self.dropped), (False, self.turns)) for t in ts]},
            settings={"system": self.system,
                      "sampling": {k: getattr(self.sampling, k) for k in
                                   ("max_new_tokens", "temperature", "top_k", "top_p", "seed")}},
            model=self.lm.name, started_at=self.started_at)
        return json.dumps(doc, ensure_ascii=False, indent=2)
