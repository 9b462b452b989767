"""A chat session that saves itself: :class:`SessionRecorder` is the ``ChatSession``'s listener
(engine.lm.chat.TurnListener) and writes every exchange of its variants tree into the session
store as it happens — a row when the answer's first token exists, the text so far while it
streams (a process that dies mid-answer leaves that partial answer, read back as stopped), the
final answer with its figures and per-token facts, and a fresh KV snapshot of the conversation.
A message stopped before its answer began, or refused, is never written, so no saved answer is
touched. :func:`open_saved` brings the whole tree back (the path that was shown, with its KV cache
from a snapshot when one is valid), and :class:`PersistentChat` is the two together.

Reopening with other weights than the session was made with cannot reuse its token ids (the
tokenizer may differ): the history is then re-encoded from its text, with a note saying so."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from engine.errors import EngineError
from engine.progress import CancelToken, ProgressFn, check, report as report_
from engine.lm.chat import ChatSession, Turn, TurnListener
from engine.lm.results import GenerationResult
from engine.lm.templates import encode_user_text
from engine.sessions.snapshot import SnapshotStore, weights_hash_for
from engine.sessions.store import SavedSession, SavedTurn, SessionStore, sessions_dir
from engine.sessions.writer_lock import session_lock

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

log = logging.getLogger("tokenforge.sessions")

SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop_strings",
                 "repetition_penalty", "min_p", "banned_ids")
#: how often a streaming answer's text is written (a crash loses at most this much of it)
STREAM_EVERY_S = 0.5


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
                total_s=0.0, stop_reason="saved" if turn.state == "done" else "stopped")
    base.update(m)
    base["text"], base["token_ids"] = turn.answer, list(turn.answer_ids)
    return GenerationResult(**base)


def info_dicts(infos: list[Any]) -> list[dict[str, Any]]:
    """TokenInfo objects as plain dicts (their JSON in the store)."""
    return [i.to_dict() if hasattr(i, "to_dict") else dict(i) for i in infos]


def infos_back(rows: list[dict[str, Any]]) -> list[Any]:
    """Saved per-token facts as TokenInfo again (a damaged row gives no facts, not an error)."""
    from engine.lm.tokeninfo import Alternative, TokenInfo

    out = []
    try:
        for r in rows:
            alts = [Alternative(int(a["id"]), str(a["text"]), float(a["logprob"]))
                    for a in r.get("alternatives", [])]
            out.append(TokenInfo(int(r["id"]), str(r["text"]), float(r["logprob"]),
                                 float(r["entropy"]), alts, int(r.get("rank", 0)),
                                 bool(r.get("forced", False))))
    except (KeyError, TypeError, ValueError):
        return []
    return out


def _saved(t: Turn, state: Optional[str] = None) -> SavedTurn:
    """The store's row for an exchange as it is now (while it streams: the per-token facts so
    far, so a process killed mid-answer leaves its partial answer browsable)."""
    infos = t.streamed_infos() if t.streamed_infos is not None else t.infos
    return SavedTurn(t.user, list(t.user_ids), t.answer, list(t.answer_ids),
                     t.result.to_dict() if t.result is not None else None, key=t.key,
                     prev=None, source=None, fork_at=t.fork_at, how=t.how,
                     state=state or t.state, infos=info_dicts(infos))


@dataclass
class OpenReport:
    """How a session came back: 'new', 'snapshot', 'recomputed' or 're-encoded'."""

    how: str
    restored_tokens: int = 0
    notes: list[str] = field(default_factory=list)


class SessionRecorder(TurnListener):
    """Saves a ``ChatSession``'s exchanges into one named session of the store, as they happen
    (attach it as ``session.listener``). ``name`` None: the session is created on the first
    answer, named by ``name_for(first message)``. A save that fails (a full disk, a busy
    database) never loses the answer: it is reported through ``on_error`` and as a note on the
    turn's result, and ``error`` keeps the last message."""

    def __init__(self, lm: LoadedModel, name: Optional[str],
                 store: SessionStore | Callable[[], SessionStore],
                 snapshots: SnapshotStore | Callable[[], SnapshotStore], *,
                 system: Optional[str] = None, sampling: Any = None,
                 name_for: Optional[Callable[[str], str]] = None,
                 on_error: Optional[Callable[[str], None]] = None, lock: Any = None) -> None:
        self.lm, self.name = lm, name
        self.lock = lock  # this session's writer lock (engine/sessions/writer_lock.py)
        # either may be given as a function that opens it: then it is opened when first needed,
        # and a failure to open (a full disk) is one not-saved note, tried again next turn
        self._store, self._snapshots = store, snapshots
        self.weights = weights_hash_for(lm)
        self.dtype = str(lm.dtype)
        self.system, self.sampling = system, sampling
        self.name_for = name_for or (lambda text: text)
        self.on_error = on_error
        self.error = ""
        self.snapshot = ""  # the KV snapshot this session's head holds
        self._pending: dict[int, str] = {}  # turn id → the save error to note on its result
        self._last = 0.0
        if name is not None:
            self._claim(name)
        if name is not None and not store.exists(name):
            store.create(name, lm.name, self.weights, system,
                         sampling_dict(sampling) if sampling is not None else {})

    def _claim(self, name: str) -> None:
        """One writer per session: a second process is refused, naming the holder (LockHeld)."""
        if self.lock is None:
            self.lock = session_lock(self.store.path, name).acquire()

    def release(self) -> None:
        """Let another process write this session."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 — interpreter shutdown
            pass

    @property
    def store(self) -> SessionStore:
        if callable(self._store) and not isinstance(self._store, SessionStore):
            self._store = self._store()
        return self._store  # type: ignore[return-value]

    @property
    def snapshots(self) -> SnapshotStore:
        if callable(self._snapshots) and not isinstance(self._snapshots, SnapshotStore):
            self._snapshots = self._snapshots()
        return self._snapshots  # type: ignore[return-value]

    # -- the listener ---------------------------------------------------------------------------
    def started(self, session: ChatSession, turn: Turn) -> None:
        def go() -> None:
            if self.name is None:
                self._create(session, turn)
            row = _saved(turn, "streaming")
            prev = session.nodes[turn.prev] if turn.prev is not None else None
            if prev is not None and prev.key is None:
                raise EngineError("the exchange before it was not saved either")
            row.prev = prev.key if prev is not None else None
            src = session.nodes[turn.source] if turn.source is not None else None
            row.source = src.key if src is not None else None
            self.store.add_turn(self.name, row, model_id=self.lm.name, weights_hash=self.weights,
                                sampling=sampling_dict(session.sampling),
                                model_spec=str(getattr(self.lm, "spec", "") or ""))
            turn.key = row.key
            self._last = time.monotonic()

        self._guard(turn, go)

    def streamed(self, session: ChatSession, turn: Turn) -> None:
        if turn.key is None or time.monotonic() - self._last < STREAM_EVERY_S:
            return
        self._last = time.monotonic()
        self._guard(turn, lambda: self.store.update_turn(turn.key, _saved(turn, "streaming")))

    def finished(self, session: ChatSession, turn: Turn) -> None:
        def go() -> None:
            if turn.key is None:
                return
            self.store.update_turn(turn.key, _saved(turn))
            if session.turns and session.turns[-1] is turn:
                self._head(session, turn, with_snapshot=True)

        self._guard(turn, go)
        why = self._pending.pop(id(turn), "")
        if why and turn.result is not None:
            turn.result.notes.append(f"not saved: {why}")

    def shown(self, session: ChatSession, turn: Optional[Turn]) -> None:
        if self.name is None or (turn is not None and turn.key is None):
            return
        self._guard(turn, lambda: self._head(session, turn, with_snapshot=False))

    # -- helpers --------------------------------------------------------------------------------
    def _create(self, session: ChatSession, turn: Turn) -> None:
        """A new saved session for this conversation (its first answer, or a conversation whose
        saved session was deleted or forgotten): the exchanges before ``turn`` are saved first,
        so the saved path is the whole conversation shown."""
        up: list[Turn] = []
        t = session.nodes[turn.prev] if turn.prev is not None else None
        while t is not None:
            up.append(t)
            t = session.nodes[t.prev] if t.prev is not None else None
        first = up[-1].user if up else turn.user
        name = self.store.unique_name(self.name_for(first))
        self.release()
        self._claim(name)
        self.name = name
        self.store.create(self.name, self.lm.name, self.weights, session.system,
                          sampling_dict(session.sampling))
        for n in session.nodes:  # keys of another saved session (or none)
            n.key = None
        prev: Optional[int] = None
        for t in reversed(up):
            row = _saved(t)
            row.prev = prev
            prev = self.store.add_turn(self.name, row, model_id=self.lm.name,
                                       weights_hash=self.weights,
                                       sampling=sampling_dict(session.sampling))
            t.key = prev

    def _head(self, session: ChatSession, turn: Optional[Turn], with_snapshot: bool) -> None:
        """The conversation now ends at ``turn``: record its path and (after an answer, whose
        cache holds it) a KV snapshot; a snapshot no session uses any more is removed."""
        old, key = self.snapshot, ""
        if with_snapshot:
            try:
                n = session.fwd.cache_len(session.cache)
                key = self.snapshots.save(session.fwd, session.cache, session.ids[:n],
                                          self.weights, self.dtype)
            except (ValueError, OSError) as e:  # a snapshot is an optimisation: never fail a turn
                if turn is not None and turn.result is not None:
                    turn.result.notes.append(f"KV snapshot not written: {e}")
        self.store.finish_path(self.name, turn.key if turn is not None else None, list(session.ids),
                               len(session.dropped), key)
        self.snapshot = key
        if old and old != key and old not in self.store.snapshots_in_use():
            self.snapshots.remove(old)

    def _guard(self, turn: Optional[Turn], fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # a disk problem must not lose the answer on screen
            if not isinstance(e, (EngineError, OSError)):
                log.exception("saving the chat failed")
            why = str(e) if isinstance(e, EngineError) else f"{type(e).__name__}: {e}"
            self.error = why
            if turn is not None:
                self._pending[id(turn)] = why
            if self.on_error is not None:
                self.on_error(why)


def _turns_from(saved: SavedSession, lm: LoadedModel, re_encode: bool) -> tuple[list[Turn], list[int]]:
    """The saved tree as Turn nodes (ids = positions in ``saved.nodes``) and the shown path."""
    at = {n.key: i for i, n in enumerate(saved.nodes)}
    enc = (lambda text: encode_user_text(lm.tokenizer, text)) if re_encode else None
    nodes = []
    for i, n in enumerate(saved.nodes):
        user_ids = enc(n.user) if enc else list(n.user_ids)
        answer_ids = enc(n.answer) if enc else list(n.answer_ids)
        t = Turn(user=n.user, user_ids=user_ids, answer=n.answer, answer_ids=answer_ids,
                 infos=[] if enc else infos_back(n.infos), id=i, prev=at.get(n.prev),
                 source=at.get(n.source), fork_at=n.fork_at, how=n.how, state=n.state, key=n.key)
        t.result = _result(n.metrics, SavedTurn(n.user, user_ids, n.answer, answer_ids,
                                                state=n.state))
        nodes.append(t)
    path = [at[t.key] for t in saved.turns if t.key in at]
    return nodes, path


def open_saved(lm: LoadedModel, name: str, store: SessionStore, snapshots: SnapshotStore,
               sampling: Any = None, lock: Any = None, *, progress: Optional[ProgressFn] = None,
               cancel: Optional[CancelToken] = None
               ) -> tuple[ChatSession, OpenReport, SessionRecorder]:
    """Reopen a saved session for ``lm``: the conversation (its whole variants tree, the path
    that was shown last as the conversation), how it came back, and the recorder that keeps
    saving it (already the session's listener). Each step is reported (phase "open")."""
    from engine.lm.config import SamplingConfig

    report_(progress, "open", 0, 3, f"reading the saved session {name!r}")
    saved = store.get(name)
    check(cancel)
    report_(progress, "open", 1, 3, f"restoring {len(saved.nodes)} exchange(s) and their token data")
    if sampling is None:
        known = {f.name for f in dataclasses.fields(SamplingConfig)}
        kw = {k: v for k, v in saved.sampling.items() if k in known}
        for k in ("stop_strings", "banned_ids"):
            if k in kw:
                kw[k] = tuple(kw[k])
        sampling = SamplingConfig(**kw)
    session = ChatSession(lm, system=saved.system, sampling=sampling)
    rec = SessionRecorder(lm, name, store, snapshots, lock=lock)
    rec.snapshot = saved.snapshot
    other = saved.weights_hash != rec.weights
    nodes, path = _turns_from(saved, lm, re_encode=other)
    report = OpenReport("new")
    if nodes:
        live_from = min(saved.live_from, len(path))
        session.adopt(nodes, path, live_from)
        live = [nodes[i] for i in path[live_from:]]
        ids = session._rebuild(live)
        if other:
            session.restore(live, ids)
            report = OpenReport("re-encoded", notes=[
                f"session {name!r} was saved with {saved.model_id} (other weights); its history "
                f"was re-encoded from text for {lm.name}"])
        elif live:
            check(cancel)
            report_(progress, "open", 2, 3, f"loading the KV snapshot ({len(ids):,} tokens)")
            held = ids[:len(ids) - 1]  # after a turn the cache holds all but the last answer token
            loaded, why = snapshots.load(session.fwd, held, rec.weights, rec.dtype)
            if loaded is not None:
                session.restore(live, ids, loaded.cache)
                report = OpenReport("snapshot", loaded.tokens)
            else:
                session.restore(live, ids)
                report = OpenReport("recomputed", 0, [why] if why != "no snapshot" else [])
        else:
            session.restore(live, ids)
    session.listener = rec
    report_(progress, "open", 3, 3, f"opened ({report.how})")
    return session, report, rec


class PersistentChat:
    """One saved conversation, continued: a ChatSession whose listener saves it. Not
    thread-safe (one job at a time, as ChatSession)."""

    def __init__(self, lm: LoadedModel, name: str, *, store: Optional[SessionStore] = None,
                 snapshots: Optional[SnapshotStore] = None, system: Optional[str] = None,
                 sampling: Any = None, lock: Any = None) -> None:
        self.lm = lm
        self.store = store or SessionStore()
        self.snapshots = snapshots or SnapshotStore(sessions_dir() / "snapshots")
        self.name = name
        if self.store.exists(name):
            self.session, self.report, self.recorder = open_saved(lm, name, self.store,
                                                                  self.snapshots, sampling, lock)
        else:
            self.recorder = SessionRecorder(lm, name, self.store, self.snapshots, system=system,
                                            sampling=sampling, lock=lock)
            self.session = ChatSession(lm, system=system, sampling=sampling)
            self.session.listener = self.recorder
            self.report = OpenReport("new")
        if self.store.notice:
            self.report.notes.append(self.store.notice)

    @property
    def all_turns(self) -> list[Turn]:
        """The conversation shown, turns dropped from the context included."""
        return self.session.path

    def send(self, text: str, **kw: Any) -> GenerationResult:
        return self.session.send(text, **kw)

    def regenerate(self, turn: Optional[int] = None, **kw: Any) -> GenerationResult:
        return self.session.regenerate(turn, **kw)

    def edit(self, turn: int, text: str, **kw: Any) -> GenerationResult:
        return self.session.edit(turn, text, **kw)

    def force(self, turn: int, position: int, token: int, **kw: Any) -> GenerationResult:
        return self.session.force(turn, position, token, **kw)

    def show(self, node: int) -> list[Turn]:
        return self.session.show(node)

    def close(self) -> None:
        self.recorder.release()
        self.store.close()
