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
from typing import TYPE_CHECKING, Any, Optional

from engine.errors import ContextOverflow, InputError
from engine.lm.forward import get_forward
from engine.lm.branching import group_parent
from engine.lm.generate import LogitsObserver, TokenCallback, generate
from engine.lm.results import GenerationResult
from engine.lm.prefill import prefill
from engine.lm.templates import TurnGlue, chat_ids, encode_user_text, turn_glue
from engine.lm.turns import (HOWS, Turn, TurnListener, TurnTree, _common,  # noqa: F401 (re-exported)
                             clean_text)
from engine.lm.tokeninfo import TokenRecorder, infos_from_logits
from engine.progress import Cancelled, CancelToken, ProgressFn, check
from engine.lm.config import SamplingConfig

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

class ChatSession(TurnTree):
    """Multi-turn chat with a conversation KV cache and the tree of every answer variant
    (``nodes``; ``dropped + turns`` is the path shown and continued). Not thread-safe: one job
    at a time."""

    top_k = 5  # alternatives kept per answer token (the token explorer's data)

    def __init__(self, lm: LoadedModel, system: Optional[str] = None,
                 sampling: Optional[SamplingConfig] = None) -> None:
        self.lm = lm
        self.sampling = sampling or SamplingConfig()
        self.started_at = time.time()  # the export's start time
        self.fwd = get_forward(lm)
        self.turns: list[Turn] = []
        self.listener: Optional[TurnListener] = None
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
        self.nodes: list[Turn] = []  # every exchange of the conversation's tree, by id
        self.first_choice: Optional[int] = None  # the first exchange shown last
        self.dropped: list[Turn] = []  # old turns dropped to fit the context (kept for export)
        self.cache = None
        self.ids: list[int] = []  # every conversation token, in order (the cache holds a prefix)

    def _restore(self, prev: tuple) -> None:
        """Put back the state an exchange found (turns, ids, cache, dropped)."""
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
        """The live ids of a conversation of ``turns`` (system prefix first): exactly the ids a
        session that answered them has, since every turn is encoded by the same rule."""
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
        return self._exchange(len(self.turns), text, "answer", on_token=on_token,
                              progress=progress, cancel=cancel, sampling=sampling, observe=observe)

    def _live_index(self, turn: Optional[int]) -> int:
        if not self.turns or self.cache is None:
            raise InputError("nothing to regenerate: send a message first")
        k = len(self.turns) - 1 if turn is None else int(turn) - len(self.dropped)
        if not 0 <= k < len(self.turns):
            if turn is not None and 0 <= int(turn) < len(self.dropped):
                raise InputError(f"turn {int(turn) + 1} was dropped from the model's context to "
                                 "fit a later message: it can no longer be answered again")
            raise InputError(f"there is no turn {turn} in this conversation")
        return k

    def regenerate(self, turn: Optional[int] = None, *, on_token: Optional[TokenCallback] = None,
                   progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None,
                   sampling: Optional[SamplingConfig] = None,
                   observe: Optional[LogitsObserver] = None) -> GenerationResult:
        """A new answer to the message of ``turn`` (an index into ``path``; default the last),
        kept beside the old one as a variant; the conversation continues from the new one. Only
        that turn's tokens are prefilled (the cache is forked where the history ends)."""
        k = self._live_index(turn)
        return self._exchange(k, self.turns[k].user, "regenerate", on_token=on_token,
                              progress=progress, cancel=cancel, sampling=sampling, observe=observe)

    def edit(self, turn: int, text: str, *, on_token: Optional[TokenCallback] = None,
             progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None,
             sampling: Optional[SamplingConfig] = None,
             observe: Optional[LogitsObserver] = None) -> GenerationResult:
        """Answer an edited message in place of turn ``turn``'s (a variant at that turn)."""
        k = self._live_index(turn)
        return self._exchange(k, text, "edit", on_token=on_token, progress=progress,
                              cancel=cancel, sampling=sampling, observe=observe)

    def force(self, turn: int, position: int, token: int, *,
              on_token: Optional[TokenCallback] = None, progress: Optional[ProgressFn] = None,
              cancel: Optional[CancelToken] = None, sampling: Optional[SamplingConfig] = None,
              observe: Optional[LogitsObserver] = None) -> GenerationResult:
        """Put ``token`` at answer position ``position`` of turn ``turn`` and continue from it: a
        variant of that answer sharing its first ``position`` tokens. Only the uncached history
        (none on the path just generated), the forced token and the new suffix are computed."""
        k = self._live_index(turn)
        src = self.turns[k]
        p, token = int(position), int(token)
        if not 0 <= p < len(src.answer_ids):
            raise InputError(f"position {p} is outside the answer's {len(src.answer_ids)} tokens")
        vocab = int(getattr(getattr(self.lm.model, "config", None), "vocab_size", 0) or 0)
        if vocab and not 0 <= token < vocab:
            raise InputError(f"token id {token} is outside the vocabulary (0–{vocab - 1})")
        if token == src.answer_ids[p]:
            raise InputError("that is the token already there: pick another alternative")
        return self._exchange(k, src.user, "force", src=src, fork_at=p, forced=token,
                              on_token=on_token, progress=progress, cancel=cancel,
                              sampling=sampling, observe=observe)

    def _exchange(self, k: int, text: str, how: str, *, src: Optional[Turn] = None,
                  fork_at: int = 0, forced: Optional[int] = None,
                  on_token: Optional[TokenCallback], progress: Optional[ProgressFn],
                  cancel: Optional[CancelToken], sampling: Optional[SamplingConfig],
                  observe: Optional[LogitsObserver]) -> GenerationResult:
        """The one way an answer is made: a new exchange at live turn ``k`` (``k`` = the number
        of live turns appends one), after the first ``k`` live turns. Everything that can refuse
        is decided before the session changes; a failure, or a cancel before the first answer
        token, leaves the session (and every saved answer) as it was."""
        cfg = (sampling or self.sampling).validate(self.lm.context_length)
        if text is None or not str(text).strip():
            raise InputError("empty message: type something first")
        text = clean_text(str(text))
        check(cancel)
        sys_cache = self._system_cache(progress, cancel)
        if self.cache is None:
            self.cache = self.fwd.fork(sys_cache)
            self.ids = list(self._sys_ids)
        turn = Turn(user=text, user_ids=encode_user_text(self.lm.tokenizer, text), how=how,
                    state="streaming")
        prefix: list[int] = []
        if forced is not None and src is not None:
            prefix = list(src.answer_ids[:fork_at]) + [int(forced)]
            turn.source = group_parent(self.nodes, src.id, fork_at) if src.id >= 0 else None
            turn.fork_at = fork_at
        budget = cfg.max_new_tokens - len(prefix)
        ctx = self.lm.context_length
        alone = len(self._sys_ids) + len(self._turn_ids(0, turn, with_answer=False)) + len(prefix)
        if alone + max(budget, 0) > ctx:
            raise ContextOverflow(
                f"message is {len(turn.user_ids)} tokens; with the system prompt "
                f"({len(self._sys_ids)}) and max_new_tokens ({cfg.max_new_tokens}) that exceeds the "
                f"context of {ctx} tokens" + (" even without history" if k else ""))
        prev = (self.turns, self.ids, self.cache, self.fwd.cache_len(self.cache), list(self.dropped))
        kept = list(self.turns[:k])
        base = self._rebuild(kept) if k < len(self.turns) else list(self.ids)
        new_ids = self._turn_ids(k, turn, with_answer=False)
        dropped, notes = 0, []
        if len(base) + len(new_ids) + len(prefix) + max(budget, 0) > ctx:
            # drop the oldest turns until the kept ones + this turn fit (the message alone fits,
            # checked above, so this ends); re-encode once from the system cache
            while kept:
                kept.pop(0)
                dropped += 1
                trial = self._rebuild(kept) + self._turn_ids(len(kept), turn, with_answer=False)
                if len(trial) + len(prefix) + max(budget, 0) <= ctx:
                    break
            base = self._rebuild(kept)
            new_ids = self._turn_ids(len(kept), turn, with_answer=False)
            cache = self.fwd.fork(sys_cache)
            notes.append(f"context full: dropped the {dropped} oldest turn(s) and re-encoded "
                         f"{len(base) - len(self._sys_ids)} history tokens once")
        else:  # reuse every cached position the new conversation shares with the old one (the
            # last token fed must be computed: its logits choose the next one, or a forced
            # token's facts)
            cache = self.fwd.fork(self.cache, keep=min(
                self.fwd.cache_len(self.cache), _common(self.ids, base + new_ids + prefix),
                len(base) + len(new_ids) + len(prefix) - (2 if prefix else 1)))
        target = base + new_ids + prefix
        turn.prev = (self.turns[k - 1].id if k else
                     self.dropped[-1].id if self.dropped else None)
        rec = TokenRecorder(self.lm.tokenizer, self.top_k)
        copied = list(src.infos[:fork_at]) if src is not None and prefix else []
        turn.streamed_infos = lambda: copied + turn.infos + rec.infos
        listener = self.listener
        began = [False]
        streamed_ids: list[int] = []

        def begin() -> None:
            if not began[0]:
                began[0] = True
                turn.id = len(self.nodes)
                self.nodes.append(turn)
                if listener is not None:
                    listener.started(self, turn)

        def obs(logits: Any, token: int) -> None:
            rec(logits, token)
            if observe is not None:
                observe(logits, token)
            streamed_ids.append(int(token))
            turn.answer_ids = prefix + streamed_ids
            begin()
            if listener is not None:
                listener.streamed(self, turn)

        def tok(delta: str, tid: int) -> None:
            turn.answer += delta
            if on_token is not None:
                on_token(delta, tid)

        try:
            if prefix:
                result, cache = self._forced(turn, target, fork_at, cache, cfg, budget, obs, tok,
                                             begin, progress, cancel)
            else:
                result, cache = generate(self.lm, target[self.fwd.cache_len(cache):], cfg,
                                         cache=cache, on_token=tok, progress=progress,
                                         cancel=cancel, prompt_tokens=len(target), observe=obs)
        except BaseException:
            self._restore(prev)
            if began[0]:  # it failed after it began: kept in the tree as stopped, off the path
                turn.state = "stopped"
                turn.infos, turn.streamed_infos = turn.streamed_infos(), None
                if listener is not None:
                    listener.finished(self, turn)
            raise
        if result.stop_reason == "cancelled" and not began[0]:
            # stopped before the answer began (during the prefill): the message is not added and
            # nothing is dropped; the caller gives the text back to the user
            self._restore(prev)
            result.discarded = True
            result.notes.append("stopped before the answer began: the message was not added")
            return result
        begin()
        self.dropped.extend(self.turns[:dropped])
        self.turns, self.cache = kept, cache
        # cache now holds everything fed + all generated tokens but the last
        self.ids = target + list(result.token_ids)
        if prefix:  # the result describes the whole answer: the copied part, the forced token
            result.token_ids = prefix + list(result.token_ids)
            result.text = self._decode(result.token_ids)
        turn.answer, turn.answer_ids = result.text, list(result.token_ids)
        turn.infos, turn.streamed_infos = copied + turn.infos + rec.infos, None
        turn.result = result
        turn.state = "stopped" if result.stop_reason == "cancelled" else "done"
        self.turns.append(turn)
        self._chosen(self.path)
        result.dropped_turns = dropped
        result.notes.extend(notes)
        if self.warning:
            result.notes.append(self.warning)
        if listener is not None:
            listener.finished(self, turn)
        return result

    def _decode(self, ids: list[int]) -> str:
        return self.lm.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _forced(self, turn: Turn, target: list[int], p: int, cache: Any, cfg: SamplingConfig,
                budget: int, obs: Any, tok: Any, begin: Any, progress: Optional[ProgressFn],
                cancel: Optional[CancelToken]) -> tuple[GenerationResult, Any]:
        """Force ``target[-1]`` at answer position ``p``: the uncached history and the answer's
        first ``p`` tokens are prefilled with one row of logits kept (the forced token's own
        facts), then decoding continues after the forced token. A cancel during that prefill
        returns an empty cancelled result (nothing began)."""
        import torch

        token, cached = target[-1], self.fwd.cache_len(cache)
        t0 = time.perf_counter()
        feed = torch.tensor([target[cached:-1]], device=self.lm.torch_device)
        try:
            row = prefill(self.fwd, feed, cache, progress=progress, cancel=cancel)[:, -1, :]
        except Cancelled:
            return GenerationResult(text="", token_ids=[], prompt_tokens=len(target) - p - 1,
                                    prefill_tokens=0, new_tokens=0, ttft_s=0.0, decode_tok_s=0.0,
                                    total_s=time.perf_counter() - t0,
                                    stop_reason="cancelled"), cache
        info = infos_from_logits(row.reshape(1, -1), [token], self.lm.tokenizer, self.top_k)[0]
        info.forced = True
        turn.infos = [info]
        prefix = target[len(target) - p - 1:]
        turn.answer_ids = list(prefix)
        begin()
        tok(self._decode(prefix), token)  # the copied part and the forced token, shown at once
        if self.listener is not None:
            self.listener.streamed(self, turn)
        n_pre = len(target) - cached - 1
        if token in set(self.lm.eos_ids) or budget < 1:
            return GenerationResult(text="", token_ids=[], prompt_tokens=len(target) - p - 1,
                                    prefill_tokens=n_pre, new_tokens=0, ttft_s=0.0,
                                    decode_tok_s=0.0, total_s=time.perf_counter() - t0,
                                    stop_reason="eos" if budget >= 1 else "max_new_tokens"), cache
        sub = SamplingConfig(**{**cfg.__dict__, "max_new_tokens": budget})
        res, cache = generate(self.lm, [token], sub, cache=cache, on_token=tok, progress=progress,
                              cancel=cancel, prompt_tokens=len(target), observe=obs)
        res.prefill_tokens += n_pre
        return res, cache

    def restore(self, turns: list[Turn], ids: list[int], cache: Any = None) -> None:
        """Continue a saved conversation: its live ``turns`` and their token ``ids`` (system
        prefix first), and optionally a KV ``cache`` holding a prefix of ``ids`` (a snapshot).
        Without one, the next turn prefills the history once. The tree (``nodes``) and the
        dropped turns are set by ``adopt`` first when there are any."""
        sys_ids = self._prefix_ids()
        if list(ids[:len(sys_ids)]) != sys_ids:
            raise InputError("the saved conversation does not start with this system prompt")
        self._sys_ids = sys_ids
        if cache is not None:
            n = self.fwd.cache_len(cache)
            if n > len(ids) or n < len(sys_ids):
                raise InputError(f"a cache of {n} positions does not fit {len(ids)} saved tokens")
            self._sys_cache = self.fwd.fork(cache, keep=len(sys_ids)) if sys_ids else self.fwd.new_cache()
        if not self.nodes:  # a plain list of turns: the tree is that one path
            for i, t in enumerate(turns):
                t.id, t.prev = i, (i - 1 if i else None)
            self.nodes = list(turns)
            self._chosen(self.nodes)
        self.turns = list(turns)
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
