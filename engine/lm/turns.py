"""A conversation's exchanges as a tree of variants, torch-free: the node (:class:`Turn`), what
is told about each one as it happens (:class:`TurnListener`, the session store's hook), and
the walking of the tree (:class:`TurnTree`, a base of ``engine.lm.chat.ChatSession``; which
answers are alternatives of each other is ``engine.lm.branching``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from engine.errors import InputError
from engine.lm.results import GenerationResult


@dataclass
class Turn:
    """One exchange — a user message and its answer — and its place in the session's tree of
    variants (every answer ever given is kept: the first one, a regenerate, a forced alternative,
    an edited message). ``prev`` is the exchange before it on its path (None: a first turn);
    exchanges with the same ``prev`` are the variants at that turn. A forced answer copies its
    source's first ``fork_at`` tokens and is grouped under ``source`` (the answer that owned that
    position, as the token explorer counts "< i/n >"); every other variant has ``source`` None.
    ``state``: streaming while it is generated, then done, or stopped (cancelled, or a saved
    partial answer of a process that died). ``key`` is the session store's row (None: unsaved)."""

    user: str
    user_ids: list[int]
    answer: str = ""
    answer_ids: list[int] = field(default_factory=list)
    result: Optional[GenerationResult] = None
    infos: list[Any] = field(default_factory=list)  # engine.lm.tokeninfo.TokenInfo per answer token
    id: int = -1
    prev: Optional[int] = None
    source: Optional[int] = None
    fork_at: int = 0
    how: str = "answer"  # answer, regenerate, force, edit
    state: str = "done"  # streaming, done, stopped
    key: Any = None
    last_child: Optional[int] = None  # the exchange after this one that was shown last
    #: while the answer streams: its per-token facts so far (a save mid-stream keeps them, so a
    #: process killed mid-answer leaves them too); None once the answer has its ``infos``
    streamed_infos: Optional[Callable[[], list[Any]]] = field(default=None, repr=False,
                                                              compare=False)


HOWS = ("answer", "regenerate", "force", "edit")


class TurnListener:
    """Told about every exchange as it happens (the session store saves through this; the
    methods run on the thread that runs the turn). ``started``: the first answer token exists;
    ``streamed``: more tokens (the listener decides how often to act); ``finished``: the turn is
    in the conversation (done or stopped); ``shown``: another path of the tree became the
    conversation, ``turn`` its last exchange (or None: an empty conversation)."""

    def started(self, session: Any, turn: Turn) -> None: ...

    def streamed(self, session: Any, turn: Turn) -> None: ...

    def finished(self, session: Any, turn: Turn) -> None: ...

    def shown(self, session: Any, turn: Optional[Turn]) -> None: ...


def clean_text(text: str) -> str:
    """Make user text safe to encode: lone surrogates replaced, NUL and other C0 controls
    (except tab/newline) dropped. Emoji and combining characters pass through unchanged."""
    text = text.encode("utf-8", "replace").decode("utf-8") if _has_surrogates(text) else text
    return "".join(ch for ch in text if ch in "\t\n\r" or not (ord(ch) < 32 or ord(ch) == 127))


def _has_surrogates(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def _common(a: list[int], b: list[int]) -> int:
    """The length of the common prefix of two id lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class TurnTree:
    """The variants tree of a conversation: ``nodes`` (every exchange, by id), the path shown
    (``dropped + turns``) and, per exchange, the one shown after it last."""

    nodes: list[Turn]
    turns: list[Turn]
    dropped: list[Turn]
    first_choice: Optional[int]
    ids: list[int]
    cache: Any
    fwd: Any
    listener: Optional[TurnListener]

    def _rebuild(self, turns: list[Turn]) -> list[int]: ...  # the session's live ids for turns

    def _system_cache(self) -> Any: ...

    @property
    def path(self) -> list[Turn]:
        """The conversation shown: the turns dropped from the context, then the live ones."""
        return self.dropped + self.turns

    def children(self, node: Optional[int]) -> list[Turn]:
        """The exchanges that follow ``node`` (None: the first exchanges), oldest first."""
        return [t for t in self.nodes if t.prev == node]

    def path_to(self, node: int) -> list[Turn]:
        """The path through ``node``: its ancestors, it, then the exchanges shown last below it
        (the most recent one where none was shown)."""
        up: list[Turn] = []
        t: Optional[Turn] = self.nodes[node]
        while t is not None:
            up.append(t)
            t = self.nodes[t.prev] if t.prev is not None else None
        path = up[::-1]
        while True:
            kids = self.children(path[-1].id)
            if not kids:
                return path
            pick = path[-1].last_child
            path.append(self.nodes[pick] if pick is not None and 0 <= pick < len(self.nodes)
                        and self.nodes[pick].prev == path[-1].id else kids[-1])

    def _chosen(self, path: list[Turn]) -> None:
        """Remember ``path`` as the one shown below each of its exchanges."""
        for a, b in zip(path, path[1:]):
            a.last_child = b.id
        if path:
            self.first_choice = path[0].id

    def adopt(self, nodes: list[Turn], path: list[int], live_from: int = 0) -> None:
        """Take a saved tree (``nodes`` by id, ``path`` the ids of the exchanges shown, of which
        the first ``live_from`` were dropped from the context). Call ``restore`` next."""
        self.nodes = list(nodes)
        for i, t in enumerate(self.nodes):
            t.id = i
        chain = [self.nodes[i] for i in path]
        self._chosen(chain)
        self.dropped = chain[:live_from]

    def show(self, node: int) -> list[Turn]:
        """Make the path through exchange ``node`` the conversation (browsing the variants).
        Nothing is recomputed now: the cache is cut back to what the new path shares with the
        old one, and the next turn prefills the rest. The dropped turns of an overflow stay
        dropped, so only a live turn's variants can be shown."""
        if not 0 <= node < len(self.nodes):
            raise InputError(f"no exchange {node} in this conversation")
        path = self.path_to(node)
        nd = len(self.dropped)
        if [t.id for t in path[:nd]] != [t.id for t in self.dropped]:
            raise InputError("that variant belongs to turns dropped from the model's context")
        turns = path[nd:]
        ids = self._rebuild(turns)
        if self.cache is None:
            self.cache = self.fwd.fork(self._system_cache())
        keep = min(self.fwd.cache_len(self.cache), _common(self.ids, ids), max(0, len(ids) - 1))
        self.cache = self.fwd.fork(self.cache, keep=keep)
        self.turns, self.ids = list(turns), ids
        self._chosen(path)
        if self.listener is not None:
            self.listener.shown(self, path[-1] if path else None)
        return path
