"""The one chat-template splitter every chat path uses, and the token chunks AdvTok scores.

``split_chat`` renders a conversation with the tokenizer's own chat template, each message's
content replaced by a sentinel, and cuts the rendering at the sentinels: the result is a list of
pieces, the template's own text alternating with the messages' text, whose concatenation is the
template's rendering (for content the template does not alter, e.g. by trimming). No family is
detected by model name. Chat sessions (``engine/lm/chat.py``), ``tokenforge inspect``, one-turn
prompts (``chat_prompt_ids``), the dashboard's methods (``engine/bench/methods/base.py``) and the
AdvTok chunks below all go through it. A tokenizer without a chat template gets one plain format
(``PLAIN_FORMAT``); a template without a system role drops the system prompt with a warning.
docs/chat-templates.md describes both rules and the encoding rule below.

Template text is encoded with special tokens parsed (they are the template's own); message text
with ``split_special_tokens=True``, so a typed ``<|im_end|>`` is ordinary text.

AdvTok scores the prompt ``SP ⊕ H ⊕ V ⊕ U ⊕ R`` (docs/algorithms.md): system chunk, user-turn
head, the candidate tokenization V of the request, user-turn tail ending with the assistant
header, and the response; ``split_template`` finds the chunks and checks them by a round trip
against ``apply_chat_template`` so a different prompt is never scored silently. Byte-level BPE
merges whitespace into the following word (`` hello``), so a template whose user head ends in
whitespace (Llama-2's ``[INST] ``, Llama-3's ``\\n\\n`` on some tokenizers) cannot be cut exactly
there. That whitespace is moved out of H into ``lead`` (and leading whitespace of U into
``trail``): the tokenized region is then ``request_text(S) = lead + S + trail``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from engine.errors import InputError

_PROBES = ("Hello world", "Why? 42", "x", "Compose an email")

# The fallback for a tokenizer without a chat template (docs/chat-templates.md): one line per
# message, the generation prompt is "Assistant:" (the model's answer brings its own space).
PLAIN_FORMAT = {"system": "{}\n", "user": "User: {}\n", "assistant": "Assistant: {}\n"}
PLAIN_GENERATION_PROMPT = "Assistant:"
NO_TEMPLATE_WARNING = ("tokenizer has no chat template: plain 'User: …' / 'Assistant: …' lines "
                       "(docs/chat-templates.md)")
NO_SYSTEM_WARNING = "this chat template has no system role: system prompt ignored"


def _sentinel(i: int) -> str:
    """Message i's stand-in: invisible separators around a tag never occur in real text."""
    return f"\u2063TFMSG{i}\u2063"


def encode_user_text(tokenizer: Any, text: str) -> list[int]:
    """User text as ordinary tokens (special-token strings are spelt, never control ids)."""
    try:
        return list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))
    except TypeError:  # tokenizers without the option: they never parse specials in user text
        return list(tokenizer.encode(text, add_special_tokens=False))


def encode_template_text(tokenizer: Any, text: str) -> list[int]:
    """Template glue: its special-token strings are the template's own and are parsed."""
    if not text:
        return []
    return list(tokenizer.encode(text, add_special_tokens=False))


def has_special_text(tokenizer: Any, text: str) -> bool:
    """Whether ``text`` spells any of the tokenizer's special tokens (``<|im_end|>`` …)."""
    specials = [s for s in (getattr(tokenizer, "all_special_tokens", None) or []) if s]
    specials += [str(t) for t in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values()
                 if getattr(t, "special", False)]
    return any(s in text for s in specials)


@dataclass(frozen=True)
class Piece:
    """A run of rendered text: the template's own (``role == "template"``) or the content of
    message ``index`` of the list given to ``split_chat`` (``role`` is that message's role)."""

    text: str
    role: str
    index: int = -1


@dataclass
class ChatText:
    """A conversation rendered by its chat template, cut at the messages' contents."""

    pieces: list[Piece]
    has_template: bool
    system_used: bool = True       # False: the template has no system role, the prompt was dropped
    warning: str = ""

    @property
    def text(self) -> str:
        """The rendering: the concatenation of every piece."""
        return "".join(p.text for p in self.pieces)

    def _at(self, index: int) -> int:
        for k, p in enumerate(self.pieces):
            if p.index == index:
                return k
        raise InputError(f"message {index} is not in the rendered conversation")

    def before(self, index: int) -> str:
        """Everything rendered before message ``index``'s content."""
        return "".join(p.text for p in self.pieces[:self._at(index)])

    def after(self, index: int) -> str:
        """Everything rendered after message ``index``'s content."""
        return "".join(p.text for p in self.pieces[self._at(index) + 1:])

    def between(self, first: int, second: int) -> str:
        """The text between the contents of messages ``first`` and ``second``."""
        return "".join(p.text for p in self.pieces[self._at(first) + 1:self._at(second)])

    def head(self, index: int) -> "ChatText":
        """The pieces before message ``index``'s content, as a ChatText of their own."""
        return ChatText(self.pieces[:self._at(index)], self.has_template, self.system_used,
                        self.warning)


def split_chat(tokenizer: Any, messages: Sequence[dict[str, str]], *,
               add_generation_prompt: bool = True,
               continue_final_message: bool = False) -> ChatText:
    """Render ``messages`` with the tokenizer's chat template and cut the text at each message's
    content (see the module docstring). A leading system message the template rejects (raises,
    or renders without its content) is dropped with ``system_used=False`` and a warning; a user
    or assistant message the template does not place exactly once, in order, is InputError."""
    msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
    if not getattr(tokenizer, "chat_template", None):
        return _plain_chat(msgs, add_generation_prompt, continue_final_message)
    indices = list(range(len(msgs)))
    has_system = bool(msgs) and msgs[0]["role"] == "system"
    try:
        text = _render_sentinels(tokenizer, msgs, indices, add_generation_prompt,
                                 continue_final_message)
        dropped = has_system and _sentinel(0) not in text
    except InputError:
        if not has_system:
            raise
        dropped = True
    if dropped:
        indices = indices[1:]
        text = _render_sentinels(tokenizer, msgs, indices, add_generation_prompt,
                                 continue_final_message)
    pieces: list[Piece] = []
    rest = text
    for i in indices:
        sent = _sentinel(i)
        role = msgs[i]["role"]
        if text.count(sent) != 1 or sent not in rest:
            raise InputError(f"chat template does not place the {role} message exactly once, in "
                             "order; cannot split it into pieces")
        glue, rest = rest.split(sent, 1)
        if glue:
            pieces.append(Piece(glue, "template"))
        pieces.append(Piece(msgs[i]["content"], role, i))
    if rest:
        pieces.append(Piece(rest, "template"))
    return ChatText(pieces, True, system_used=not dropped,
                    warning=NO_SYSTEM_WARNING if dropped else "")


def _render_sentinels(tokenizer: Any, msgs: list[dict[str, str]], indices: list[int],
                      gen: bool, cont: bool) -> str:
    marked = [{"role": msgs[i]["role"], "content": _sentinel(i)} for i in indices]
    kw = {"continue_final_message": True} if cont else {"add_generation_prompt": gen}
    try:
        return tokenizer.apply_chat_template(marked, tokenize=False, **kw)
    except Exception as e:  # noqa: BLE001 - templates raise their own errors (raise_exception)
        raise InputError(f"chat template failed to render: {e}") from e


def _plain_chat(msgs: list[dict[str, str]], gen: bool, cont: bool) -> ChatText:
    """PLAIN_FORMAT, cut the same way: each message's line, then the generation prompt."""
    pieces: list[Piece] = []
    for i, m in enumerate(msgs):
        fmt = PLAIN_FORMAT.get(m["role"], m["role"].capitalize() + ": {}\n")
        head, tail = fmt.split("{}")
        if cont and i == len(msgs) - 1:
            tail = ""
        if head:
            pieces.append(Piece(head, "template"))
        pieces.append(Piece(m["content"], m["role"], i))
        if tail:
            pieces.append(Piece(tail, "template"))
    if gen and not cont:
        pieces.append(Piece(PLAIN_GENERATION_PROMPT, "template"))
    return ChatText(pieces, False, warning=NO_TEMPLATE_WARNING)


def encode_pieces(tokenizer: Any, chat: ChatText) -> list[list[int]]:
    """Each piece on its own: template text with its special tokens parsed, message text as
    ordinary text (without a template every piece is ordinary text)."""
    glue = encode_template_text if chat.has_template else encode_user_text
    return [glue(tokenizer, p.text) if p.role == "template" else
            (encode_user_text(tokenizer, p.text) if p.text else []) for p in chat.pieces]


def chat_ids(tokenizer: Any, chat: ChatText, *, allow_special: bool = False) -> list[int]:
    """The conversation's token ids. When no message spells a special token (or
    ``allow_special``), the whole rendering is encoded at once: exactly the template's own
    tokenization. Otherwise piece by piece, so the user's text never becomes control tokens."""
    if not chat.has_template:
        enc = encode_template_text if allow_special else encode_user_text
        return enc(tokenizer, chat.text)
    if allow_special or not any(p.role != "template" and has_special_text(tokenizer, p.text)
                                for p in chat.pieces):
        return encode_template_text(tokenizer, chat.text)
    return [t for ids in encode_pieces(tokenizer, chat) for t in ids]


def chat_prompt_ids(tokenizer: Any, prompt: str, system: Optional[str] = None, *,
                    allow_special: bool = False) -> list[int]:
    """A one-turn prompt (generation prompt added) with the one rule every front end follows:
    the user's text (prompt and system) never becomes control tokens unless ``allow_special``."""
    msgs = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": prompt}]
    return chat_ids(tokenizer, split_chat(tokenizer, msgs), allow_special=allow_special)


@dataclass(frozen=True)
class TurnGlue:
    """The template text around user turn ``i`` of a conversation (what a chat session encodes
    besides the messages and the answers it generated)."""

    prefix: ChatText    # everything before the first user message (system prompt included),
    #                     without the whitespace it ends with (that goes to turn 0's head)
    head: str           # before user message i: after answer i-1, or the prefix's whitespace
    tail: str           # after user message i, ending with the assistant header
    system_used: bool
    warning: str

    def turn(self, message: str) -> ChatText:
        """Head, message and tail as one segment: ``chat_ids`` encodes it the way the template's
        own tokenization does (in one piece unless the message spells a special token)."""
        return ChatText([Piece(self.head, "template"), Piece(message, "user", 0),
                         Piece(self.tail, "template")], self.prefix.has_template)


def turn_glue(tokenizer: Any, system: Optional[str], turn: int) -> TurnGlue:
    """Split a conversation of ``turn`` answered turns and one more user message.

    The prefix is cached once for every conversation, so it is cut where a tokenizer cannot
    merge across the cut: whitespace at its end (ChatML's ``user\n``, Llama-3's ``\n\n``,
    ``[INST] ``) is moved to turn 0's head and tokenized with the message."""
    msgs = [{"role": "system", "content": system}] if system else []
    for _ in range(turn):
        msgs += [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]
    msgs.append({"role": "user", "content": "u"})
    chat = split_chat(tokenizer, msgs, add_generation_prompt=True)
    first, last = len(msgs) - 1 - 2 * turn, len(msgs) - 1
    prefix = chat.head(first)
    pieces, space = list(prefix.pieces), ""
    if pieces and pieces[-1].role == "template":
        text = pieces[-1].text
        cut = len(text.rstrip())
        space = text[cut:]
        pieces[-1:] = [Piece(text[:cut], "template")] if cut else []
    head = chat.between(last - 1, last) if turn else space
    return TurnGlue(ChatText(pieces, prefix.has_template, prefix.system_used, prefix.warning),
                    head, chat.after(last), chat.system_used, chat.warning)


def _ids(x: Any) -> list[int]:
    """apply_chat_template(tokenize=True) output as a flat id list (transformers 5 may return a
    BatchEncoding whose len() is 2 — read input_ids)."""
    if hasattr(x, "keys") and "input_ids" in x:
        x = x["input_ids"]
    x = list(x)
    if x and isinstance(x[0], (list, tuple)):
        x = list(x[0])
    return [int(t) for t in x]


@dataclass
class ChatChunks:
    """Token chunks of a one-turn prompt; the request goes between ``head_ids`` and ``tail_ids``."""

    system_ids: list[int]          # SP (may be empty: system folded into H, or none)
    head_ids: list[int]            # H: user-turn head
    tail_ids: list[int]            # U: user-turn tail, ends with the assistant header
    system_used: bool              # False when the template has no system role: "system prompt ignored"
    warning: str = ""
    lead: str = ""                 # template whitespace tokenized together with the request
    trail: str = ""
    has_template: bool = True
    system: Optional[str] = None
    _tokenizer: Any = field(default=None, repr=False, compare=False)
    _messages: list[dict[str, str]] = field(default_factory=list, repr=False, compare=False)
    _tail_text: str = field(default="", repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (``dataclasses.asdict`` would deep-copy the tokenizer)."""
        return {"system_ids": list(self.system_ids), "head_ids": list(self.head_ids),
                "tail_ids": list(self.tail_ids), "system_used": self.system_used,
                "warning": self.warning, "lead": self.lead, "trail": self.trail,
                "has_template": self.has_template, "system": self.system}

    @property
    def prefix_ids(self) -> list[int]:
        """SP ⊕ H: everything before the request (the part a scorer caches once)."""
        return self.system_ids + self.head_ids

    def request_text(self, request: str) -> str:
        """The exact text whose tokenizations sit between H and U."""
        return self.lead + request + self.trail

    def prompt_ids(self, request_ids: list[int]) -> list[int]:
        """SP ⊕ H ⊕ V ⊕ U for a tokenization V of ``request_text(S)``."""
        return self.system_ids + self.head_ids + list(request_ids) + self.tail_ids

    def response_ids(self, response: str) -> list[int]:
        """R as the template renders it after the assistant header (continue_final_message),
        encoded canonically; the response text itself never yields control ids."""
        n = len(self._messages)
        chat = split_chat(self._tokenizer, self._messages + [
            {"role": "user", "content": "x"}, {"role": "assistant", "content": response}],
            add_generation_prompt=False, continue_final_message=True)
        glue = chat.between(n, n + 1)
        if not glue.startswith(self._tail_text):
            raise InputError("chat template renders the assistant turn differently from its "
                             "generation prompt; cannot place the response")
        glue = glue[len(self._tail_text):]   # text between the assistant header and R
        if self.has_template and has_special_text(self._tokenizer, glue):
            return encode_template_text(self._tokenizer, glue) + encode_user_text(
                self._tokenizer, response)
        return encode_user_text(self._tokenizer, glue + response)

    def reference_ids(self, request: str) -> list[int]:
        """The template's own tokenization of the one-turn prompt with ``request``."""
        msgs = self._messages + [{"role": "user", "content": request}]
        if not self.has_template:  # the plain format, all of it encoded as text
            return chat_ids(self._tokenizer, split_chat(self._tokenizer, msgs))
        return _ids(self._tokenizer.apply_chat_template(msgs, tokenize=True,
                                                        add_generation_prompt=True,
                                                        return_dict=False))

    def verify(self, request: str, request_ids: Optional[list[int]] = None) -> None:
        """Round trip: SP ⊕ H ⊕ canonical(lead+S+trail) ⊕ U must equal the template's own
        tokenization; InputError otherwise (never silently score a different prompt)."""
        ids = request_ids if request_ids is not None else encode_user_text(
            self._tokenizer, self.request_text(request))
        specials = [s for s in (getattr(self._tokenizer, "all_special_tokens", None) or []) if s]
        if any(s in request for s in specials):
            # apply_chat_template would turn these strings into control ids; we never do, so the
            # template's own tokenization is not the reference here: check no control id leaks.
            special_ids = set(getattr(self._tokenizer, "all_special_ids", None) or [])
            if any(t in special_ids for t in ids):
                raise InputError("request encodes to control tokens")
            return
        if self.prompt_ids(ids) != self.reference_ids(request):
            raise InputError("this request does not tokenize the same way inside the chat "
                             "template as on its own (tokens merge across the template boundary)",
                             hint="trim leading/trailing whitespace from the request")


def _trailing_ws(s: str) -> int:
    return len(s) - len(s.rstrip())


def _leading_ws(s: str) -> int:
    return len(s) - len(s.lstrip())


def split_template(tokenizer: Any, system: Optional[str]) -> ChatChunks:
    """AdvTok's chunks of the chat template for a one-turn prompt with this system prompt.

    ``system=None`` uses the template's default (some inject their own system text). A template
    without a system role keeps working with ``system_used=False`` and a warning; a tokenizer
    without a template uses the plain format with a warning; a template that cannot be split
    into exact token chunks raises InputError."""
    msgs = [{"role": "system", "content": system}] if system is not None else []
    chat = split_chat(tokenizer, msgs + [{"role": "user", "content": "x"}])
    u = len(msgs)
    sys_msgs = msgs if chat.system_used else []
    before, after = chat.before(u), chat.after(u)
    sp_text = ""
    if sys_msgs:
        try:  # the system turn rendered alone: where SP ends and H begins
            s = split_chat(tokenizer, sys_msgs, add_generation_prompt=False)
            if s.system_used and s.text and before.startswith(s.text) and system in s.text:
                sp_text = s.text
        except InputError:
            sp_text = ""
    chunks = ChatChunks(system_ids=[], head_ids=[], tail_ids=[], system_used=chat.system_used,
                        warning=chat.warning, has_template=chat.has_template, system=system,
                        _tokenizer=tokenizer, _messages=sys_msgs, _tail_text=after)
    return _fit(chunks, tokenizer, before, after, sp_text)


def _fit(chunks: ChatChunks, tokenizer: Any, before: str, after: str, sp_text: str) -> ChatChunks:
    """Choose the cut (system chunk kept or folded into H; the least template whitespace moved
    into lead/trail) whose chunks reproduce the template's own tokenization on probe requests."""
    u_text = after
    h_text = before[len(sp_text):]
    # without a template every piece is plain text: specials are never parsed
    enc = encode_template_text if chunks.has_template else encode_user_text
    sp_opts = [sp_text, ""] if sp_text else [""]
    # least whitespace moved first: (lead chars, trail chars)
    moves = sorted(((a, b) for a in range(_trailing_ws(h_text) + 1)
                    for b in range(_leading_ws(u_text) + 1)), key=lambda ab: (ab[0] + ab[1], ab))
    for sp in sp_opts:
        head_full = before[len(sp):]
        for a, b in moves:
            h = head_full[:len(head_full) - a] if a else head_full
            chunks.system_ids = enc(tokenizer, sp)
            chunks.head_ids = enc(tokenizer, h)
            chunks.tail_ids = enc(tokenizer, u_text[b:])
            chunks.lead = head_full[len(head_full) - a:] if a else ""
            chunks.trail = u_text[:b]
            try:
                for p in _PROBES:
                    chunks.verify(p)
            except InputError:
                continue
            return chunks
    raise InputError("cannot split this chat template into exact token chunks: the tokens "
                     "around the user message merge with it",
                     hint="the template's text next to the user message is tokenized jointly")
