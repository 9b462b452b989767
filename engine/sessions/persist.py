"""A chat session that saves itself: :class:`PersistentChat` binds an ``engine.lm.chat``
``ChatSession`` to a row of the session store, restores it on open (KV cache from a snapshot
when one is valid) and records every turn and a fresh snapshot after it.

Reopening with other weights than the session was made with cannot reuse its token ids (the
tokenizer may differ): the history is then re-encoded from its text, with a note saying so."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from engine.lm.chat import ChatSession, Turn
from engine.lm.results import GenerationResult
from engine.lm.templates import encode_user_text
from engine.sessions.snapshot import SnapshotStore, weights_hash_for
from engine.sessions.store import SavedTurn, SessionStore, sessions_dir

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop_strings",
                 "repetition_penalty", "min_p", "banned_ids")


def sampling_dict(cfg: Any) -> dict[str, Any]:
    out = {k: getattr(cfg, k) for k in SAMPLING_KEYS if hasattr(cfg, k)}
    for k in ("stop_strings", "banned_ids"):
        if k in out:
            out[k] = list(out[k])
    return out


def _result(metrics: Optional[dict[str, Any]], turn: SavedTurn) -> GenerationResult:
    known = {f.name for f in dataclasses.fields(GenerationResult)}
    m = {k: v for k, v in (metrics or {}).items() if k in known}
    base = dict(text=turn.answer, token_ids=list(turn.answer_ids), prompt_tokens=0,
                prefill_tokens=0, new_tokens=len(turn.answer_ids), ttft_s=0.0, decode_tok_s=0.0,
                total_s=0.0, stop_reason="saved")
    base.update(m)
    base["text"], base["token_ids"] = turn.answer, list(turn.answer_ids)
    return GenerationResult(**base)


@dataclass
class OpenReport:
    """How a session came back: 'new', 'snapshot', 'recomputed' or 're-encoded'."""

    how: str
    restored_tokens: int = 0
    notes: list[str] = field(default_factory=list)


class SessionRecorder:
    """Saves a ``ChatSession``'s turns into one named session of the store (created if new),
    with a fresh KV snapshot after each turn. Call :meth:`record` after every send/regenerate."""

    def __init__(self, lm: LoadedModel, name: str, store: SessionStore, snapshots: SnapshotStore, *,
                 system: Optional[str] = None, sampling: Any = None,
                 all_turns: Optional[list[SavedTurn]] = None, live_from: int = 0) -> None:
        self.lm, self.name, self.store, self.snapshots = lm, name, store, snapshots
        self.weights = weights_hash_for(lm)
        self.dtype = str(lm.dtype)
        self.all_turns: list[SavedTurn] = list(all_turns or [])  # dropped ones included
        self.live_from = live_from
        if not store.exists(name):
            store.create(name, lm.name, self.weights, system,
                         sampling_dict(sampling) if sampling is not None else {})

    def record(self, s: ChatSession, r: GenerationResult) -> None:
        """Save the session's last turn (a regenerated one becomes a branch in the store)."""
        if r.dropped_turns:  # context overflow dropped the oldest live turns
            self.live_from += r.dropped_turns
        index = len(s.turns) - 1 + self.live_from
        t = s.turns[-1]
        saved = SavedTurn(t.user, list(t.user_ids), t.answer, list(t.answer_ids), r.to_dict())
        self.all_turns = self.all_turns[:index] + [saved]
        old = self.store.get(self.name).snapshot
        key = ""
        try:
            key = self.snapshots.save(s.fwd, s.cache, s.ids[:s.fwd.cache_len(s.cache)],
                                      self.weights, self.dtype)
        except (ValueError, OSError) as e:  # a snapshot is an optimisation: never fail a turn
            r.notes.append(f"KV snapshot not written: {e}")
        self.store.save_turn(self.name, index, saved, list(s.ids), self.live_from,
                             model_id=self.lm.name, weights_hash=self.weights,
                             sampling=sampling_dict(s.sampling), snapshot=key)
        if old and old != key and old not in self.store.snapshots_in_use():
            self.snapshots.remove(old)


def open_saved(lm: LoadedModel, name: str, store: SessionStore, snapshots: SnapshotStore,
               sampling: Any = None) -> tuple[ChatSession, OpenReport, SessionRecorder]:
    """Reopen a saved session for ``lm``: the conversation, how it came back, and the recorder
    that keeps saving it."""
    from engine.lm.config import SamplingConfig

    saved = store.get(name)
    if sampling is None:
        known = {f.name for f in dataclasses.fields(SamplingConfig)}
        kw = {k: v for k, v in saved.sampling.items() if k in known}
        for k in ("stop_strings", "banned_ids"):
            if k in kw:
                kw[k] = tuple(kw[k])
        sampling = SamplingConfig(**kw)
    session = ChatSession(lm, system=saved.system, sampling=sampling)
    rec = SessionRecorder(lm, name, store, snapshots, all_turns=saved.turns,
                          live_from=saved.live_from)
    live = saved.turns[saved.live_from:]
    if not live:
        return session, OpenReport("new"), rec
    if saved.weights_hash != rec.weights:
        enc = lambda text: encode_user_text(lm.tokenizer, text)  # noqa: E731
        turns = [Turn(user=t.user, user_ids=enc(t.user), answer=t.answer, answer_ids=enc(t.answer))
                 for t in live]
        for t, sv in zip(turns, live):
            t.result = _result(sv.metrics, SavedTurn(t.user, t.user_ids, t.answer, t.answer_ids))
        session.restore(turns, session._rebuild(turns))
        return session, OpenReport("re-encoded", notes=[
            f"session {name!r} was saved with {saved.model_id} (other weights); its history "
            f"was re-encoded from text for {lm.name}"]), rec
    turns = [Turn(user=t.user, user_ids=t.user_ids, answer=t.answer, answer_ids=t.answer_ids,
                  result=_result(t.metrics, t)) for t in live]
    ids = saved.conv_ids
    held = ids[:len(ids) - 1]  # after a turn the cache holds all but the last answer token
    loaded, why = snapshots.load(session.fwd, held, rec.weights, rec.dtype)
    if loaded is not None:
        session.restore(turns, ids, loaded.cache)
        return session, OpenReport("snapshot", loaded.tokens), rec
    session.restore(turns, ids)
    return session, OpenReport("recomputed", 0, [why] if why != "no snapshot" else []), rec


class PersistentChat:
    """One saved conversation, continued: a ChatSession plus its recorder. Not thread-safe (one
    job at a time, as ChatSession)."""

    def __init__(self, lm: LoadedModel, name: str, *, store: Optional[SessionStore] = None,
                 snapshots: Optional[SnapshotStore] = None, system: Optional[str] = None,
                 sampling: Any = None) -> None:
        self.lm = lm
        self.store = store or SessionStore()
        self.snapshots = snapshots or SnapshotStore(sessions_dir() / "snapshots")
        self.name = name
        if self.store.exists(name):
            self.session, self.report, self.recorder = open_saved(lm, name, self.store,
                                                                  self.snapshots, sampling)
        else:
            self.recorder = SessionRecorder(lm, name, self.store, self.snapshots, system=system,
                                            sampling=sampling)
            self.session = ChatSession(lm, system=system, sampling=sampling)
            self.report = OpenReport("new")
        if self.store.notice:
            self.report.notes.append(self.store.notice)

    @property
    def all_turns(self) -> list[SavedTurn]:
        return self.recorder.all_turns

    def send(self, text: str, **kw: Any) -> GenerationResult:
        r = self.session.send(text, **kw)
        self.recorder.record(self.session, r)
        return r

    def regenerate(self, **kw: Any) -> GenerationResult:
        r = self.session.regenerate(**kw)
        self.recorder.record(self.session, r)
        return r

    def close(self) -> None:
        self.store.close()
