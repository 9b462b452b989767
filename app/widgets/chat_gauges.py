"""The chat screen's comforts: a live context meter, a memory gauge, and copying an answer or
one of its code blocks.

- Context meter: tokens the conversation holds / the model's context window, plus the message
  being typed and the answer budget (max new tokens); it warns before the next turn overflows
  and says what will happen then (the oldest turns are dropped and the rest re-encoded once, or
  the message is refused when it cannot fit even alone).
- Memory gauge: process RSS (psutil) and, on CUDA, allocated / reserved / total; refreshed at
  most once a second (``MEMORY_PERIOD_S``), since reading it is not free and nobody reads faster.
- Copy: ``App.copy_to_clipboard`` writes OSC 52, which terminals (and tmux with set-clipboard,
  and SSH sessions) turn into a real clipboard write; the app also keeps the text itself.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from app.app_access import AppAccess

MEMORY_PERIOD_S = 1.0
METER_PERIOD_S = 0.5
WARN_FRACTION = 0.9

_FENCE = re.compile(r"^(?P<fence>```+|~~~+)[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.S | re.M)


def code_blocks(markdown: str) -> list[str]:
    """The fenced code blocks of a Markdown text, in order (an unclosed last fence counts: an
    answer cut off by max_new_tokens still has its code)."""
    blocks = [m.group("body").rstrip("\n") for m in _FENCE.finditer(markdown)]
    rest = _FENCE.sub("", markdown)
    m = re.search(r"^(```+|~~~+)[^\n]*\n(?P<body>.*)\Z", rest, re.S | re.M)
    if m and m.group("body").strip():
        blocks.append(m.group("body").rstrip("\n"))
    return blocks


def _mib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def memory_text() -> str:
    import os
    import sys

    parts = []
    try:
        import psutil

        parts.append(f"RSS {_mib(psutil.Process(os.getpid()).memory_info().rss)}")
    except Exception:
        parts.append("RSS ?")
    torch = sys.modules.get("torch")  # never import torch just to show a gauge
    try:
        if torch is not None and torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            parts.append(f"CUDA {_mib(torch.cuda.memory_allocated())} alloc · "
                         f"{_mib(torch.cuda.memory_reserved())} reserved · {_mib(total)} total")
    except Exception:
        pass
    return " · ".join(parts)


def context_text(used: int, draft: int, budget: int, window: int) -> tuple[str, str]:
    """(text, level) for the meter; level is '', 'warn' or 'over'."""
    if window <= 0:
        return "context ?", ""
    need = used + draft + budget
    pct = 100.0 * used / window
    text = f"context {used:,} / {window:,} tokens ({pct:.0f} %)"
    if draft:
        text += f" · +{draft:,} typed"
    if draft + budget > window:
        return text + " · [red]this message + max new tokens cannot fit the context at all[/]", "over"
    if need > window:
        return (text + f" · [yellow]next turn overflows ({need:,} > {window:,}): the oldest turns "
                "will be dropped and the rest re-encoded once[/]"), "over"
    if need > WARN_FRACTION * window:
        return text + f" · [yellow]{window - need:,} tokens left after the next answer[/]", "warn"
    return text, ""


class ContextMeter(AppAccess, Static):
    """Tokens used / context window of the chat screen's conversation (polled, cheap)."""

    def on_mount(self) -> None:
        self._last: Optional[tuple[int, int, int, int]] = None
        self._draft_text = ""
        self._draft = 0
        self.tick()
        self.set_interval(METER_PERIOD_S, self.tick)

    def _draft_tokens(self, text: str, lm: Any) -> int:  # Any: also a model without a tokenizer
        if text == self._draft_text:
            return self._draft
        self._draft_text = text
        tok = getattr(lm, "tokenizer", None)
        try:
            self._draft = len(tok.encode(text, add_special_tokens=False)) if text else 0
        except Exception:  # no tokenizer (a fake engine): about 4 characters a token
            self._draft = len(text) // 4
        return self._draft

    def tick(self) -> None:
        scr: Any = self.screen
        app = self.tokenforge_app
        lm = getattr(app, "lm", None)
        window = int(getattr(lm, "context_length", 0) or 0)
        session = getattr(scr, "session", None)
        used = len(getattr(session, "ids", []) or []) if session is not None and \
            getattr(session, "lm", lm) is lm and not getattr(scr, "reset_pending", False) else 0
        try:
            typed = scr.query_one("#prompt").value
        except Exception:
            typed = ""
        draft = self._draft_tokens(typed, lm) if lm is not None else 0
        budget = int(app.settings.sampling.max_new_tokens)
        key = (used, draft, budget, window)
        if key == self._last:
            return
        self._last = key
        text, level = context_text(used, draft, budget, window) if lm is not None else ("context: no model", "")
        self.update(text)
        self.set_class(level == "warn", "-warn")
        self.set_class(level == "over", "-over")


class MemoryGauge(Static):
    """Process RSS (+ CUDA), refreshed at most once a second."""

    def on_mount(self) -> None:
        self.updates = 0
        self.refresh_memory()
        self.set_interval(MEMORY_PERIOD_S, self.refresh_memory)

    def refresh_memory(self) -> None:
        self.updates += 1
        self.update(memory_text())


class ChatGauges(Horizontal):
    """One line under the transcript: context meter on the left, memory on the right."""

    DEFAULT_CSS = """
    ChatGauges { height: 1; }
    ChatGauges ContextMeter { width: 1fr; color: $text-muted; }
    ChatGauges ContextMeter.-warn { color: $warning; }
    ChatGauges ContextMeter.-over { color: $error; }
    ChatGauges MemoryGauge { width: auto; color: $text-muted; }
    """

    def compose(self) -> ComposeResult:
        yield ContextMeter(id="context-meter")
        yield MemoryGauge(id="memory-gauge")


def copy_last_answer(screen: Any) -> None:
    """Copy the last answer's text (Markdown source) to the clipboard."""
    from app.widgets.chat_messages import AssistantMessage

    answers = [a for a in screen.query(AssistantMessage) if a.text]
    if not answers:
        screen.notify("No answer to copy yet", severity="warning")
        return
    text = answers[-1].text
    screen.app.copy_to_clipboard(text)
    screen.notify(f"Copied the answer ({len(text):,} characters)")


def copy_code_block(screen: Any) -> None:
    """Copy a code block of the last answer; each press takes the next one (wrapping)."""
    from app.widgets.chat_messages import AssistantMessage

    answers = [a for a in screen.query(AssistantMessage) if a.text]
    blocks = code_blocks(answers[-1].text) if answers else []
    if not blocks:
        screen.notify("The last answer has no code block", severity="warning")
        return
    key = (id(answers[-1]), answers[-1].text)
    i = getattr(screen, "_code_copy", (None, -1))
    n = (i[1] + 1) % len(blocks) if i[0] == key else 0
    screen._code_copy = (key, n)
    screen.app.copy_to_clipboard(blocks[n])
    screen.notify(f"Copied code block {n + 1}/{len(blocks)} ({len(blocks[n]):,} characters)")
