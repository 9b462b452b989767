"""Split a chat template into token chunks around one user request (ALGORITHMS §2.2).

The prompt an attack scores is ``SP ⊕ H ⊕ V ⊕ U ⊕ R``: system chunk, user-turn head, the
candidate tokenization V of the request, user-turn tail ending with the assistant header, and the
response. The chunks are found by rendering the tokenizer's own template around a sentinel user
message (no family detection by model name) and are checked by a round trip against
``apply_chat_template`` so a different prompt is never scored silently.

Template text is encoded with special tokens parsed (they are the template's own); user text is
encoded with ``split_special_tokens=True`` so a typed ``<|im_end|>`` is ordinary text.

Byte-level BPE merges whitespace into the following word (`` hello``), so a template whose user
head ends in whitespace (Llama-2's ``[INST] ``, Llama-3's ``\\n\\n`` on some tokenizers) cannot be
cut exactly there. That whitespace is moved out of H into ``lead`` (and leading whitespace of U
into ``trail``): the tokenized region is then ``request_text(S) = lead + S + trail``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from engine.errors import InputError

SENT = "\u2063TFREQ\u2063"      # invisible separators: never occur in real text
SYS_SENT = "\u2063TFSYS\u2063"
_PROBES = ("Hello world", "Why? 42", "x", "Compose an email")
_NO_TEMPLATE_HEAD = "User: "
_NO_TEMPLATE_TAIL = "\nAssistant:"


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


def chat_prompt_ids(tokenizer: Any, prompt: str, system: Optional[str] = None, *,
                    allow_special: bool = False) -> list[int]:
    """A one-turn prompt through the chat template (generation prompt added), with the one rule
    every front end follows: the user's text (prompt and system) never becomes control tokens
    unless ``allow_special`` asks for it. Text without special-token strings is encoded exactly
    as the template renders it; otherwise the template glue is encoded with its specials and the
    user's pieces with ``encode_user_text``. No template: the text alone."""
    if not getattr(tokenizer, "chat_template", None):
        text = _plain_system(system) + prompt
        return encode_template_text(tokenizer, text) if allow_special else encode_user_text(tokenizer, text)
    msgs = ([{"role": "system", "content": system}] if system else []) + \
        [{"role": "user", "content": prompt}]
    user_text = prompt + (system or "")
    if allow_special or not has_special_text(tokenizer, user_text):
        return encode_template_text(tokenizer, _render(tokenizer, msgs, True))
    marked = ([{"role": "system", "content": SYS_SENT}] if system else []) + \
        [{"role": "user", "content": SENT}]
    text = _render(tokenizer, marked, True)
    if text.count(SENT) != 1 or (system and text.count(SYS_SENT) != 1):
        raise InputError("chat template does not place the message exactly once")
    ids: list[int] = []
    rest = text
    for sent, content in ((SYS_SENT, system), (SENT, prompt)):
        if not content:
            continue
        glue, rest = rest.split(sent, 1)
        ids += encode_template_text(tokenizer, glue) + encode_user_text(tokenizer, content)
    return ids + encode_template_text(tokenizer, rest)


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
    _full_sent: str = field(default="", repr=False, compare=False)

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
        if not self.has_template:
            text = response if response[:1].isspace() else " " + response
            return encode_user_text(self._tokenizer, text)
        msgs = self._messages + [{"role": "user", "content": SENT},
                                 {"role": "assistant", "content": response}]
        try:
            text = self._tokenizer.apply_chat_template(msgs, tokenize=False,
                                                       continue_final_message=True)
        except Exception as e:
            raise InputError(f"chat template cannot render an assistant response: {e}") from e
        if not text.startswith(self._full_sent):
            raise InputError("chat template renders the assistant turn differently from its "
                             "generation prompt; cannot place the response")
        r_text = text[len(self._full_sent):]
        stripped = response.strip()
        k = r_text.rfind(stripped) if stripped else len(r_text)
        glue = r_text[:k] if k >= 0 else ""
        specials = [s for s in (getattr(self._tokenizer, "all_special_tokens", None) or []) if s]
        if glue and any(s in glue for s in specials):
            return encode_template_text(self._tokenizer, glue) + encode_user_text(
                self._tokenizer, r_text[len(glue):])
        return encode_user_text(self._tokenizer, r_text)

    def reference_ids(self, request: str) -> list[int]:
        """The template's own tokenization of the one-turn prompt with ``request``."""
        if not self.has_template:  # plain concatenation, all of it encoded as text
            return encode_user_text(self._tokenizer, _plain_system(self.system)
                                    + _NO_TEMPLATE_HEAD + request + _NO_TEMPLATE_TAIL)
        msgs = self._messages + [{"role": "user", "content": request}]
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


def _plain_system(system: Optional[str]) -> str:
    return (system + "\n") if system else ""


def _render(tok: Any, msgs: list[dict[str, str]], gen: bool) -> str:
    return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)


def _trailing_ws(s: str) -> int:
    return len(s) - len(s.rstrip())


def _leading_ws(s: str) -> int:
    return len(s) - len(s.lstrip())


def split_template(tokenizer: Any, system: Optional[str]) -> ChatChunks:
    """Chunks of the tokenizer's chat template for a one-turn prompt with this system prompt.

    ``system=None`` uses the template's default (some inject their own system text). A template
    without a system role keeps working with ``system_used=False`` and a warning; a tokenizer
    without a template falls back to plain concatenation with a warning; a template that cannot
    be split into exact token chunks raises InputError."""
    if not getattr(tokenizer, "chat_template", None):
        sp_text = _plain_system(system)
        before, after = sp_text + _NO_TEMPLATE_HEAD, _NO_TEMPLATE_TAIL
        chunks = ChatChunks(system_ids=[], head_ids=[], tail_ids=[], system_used=True,
                            has_template=False, system=system,
                            warning="tokenizer has no chat template: plain concatenation "
                                    "(system text, 'User: …', 'Assistant:')",
                            _tokenizer=tokenizer)
        return _fit(chunks, tokenizer, before, after, sp_text)
    warning = ""
    sys_msgs = [{"role": "system", "content": system}] if system is not None else []
    system_used = True
    if sys_msgs:
        try:
            probe = _render(tokenizer, [{"role": "system", "content": SYS_SENT},
                                        {"role": "user", "content": SENT}], True)
            if SYS_SENT not in probe:
                system_used = False
        except Exception:
            system_used = False
        if not system_used:
            sys_msgs = []
            warning = "this chat template has no system role: system prompt ignored"
    try:
        full = _render(tokenizer, sys_msgs + [{"role": "user", "content": SENT}], True)
    except Exception as e:
        raise InputError(f"chat template failed to render a user message: {e}") from e
    if full.count(SENT) != 1:
        raise InputError("chat template does not place the user message exactly once; "
                         "cannot split it into chunks")
    before, after = full.split(SENT)
    sp_text = ""
    if sys_msgs:
        try:
            s = _render(tokenizer, sys_msgs, False)
            if s and before.startswith(s) and system in s:
                sp_text = s
        except Exception:
            sp_text = ""
    chunks = ChatChunks(system_ids=[], head_ids=[], tail_ids=[], system_used=system_used,
                        warning=warning, has_template=True, system=system,
                        _tokenizer=tokenizer, _messages=sys_msgs, _full_sent=full)
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
