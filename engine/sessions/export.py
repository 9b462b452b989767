"""A saved session as Markdown: every turn of its head branch (turns dropped from the live
context by an overflow included), with each answer's figures when they were recorded."""
from __future__ import annotations

import time

from engine.sessions.store import SavedSession
from engine.inert import printable


def to_markdown(s: SavedSession) -> str:
    lines = [f"# {s.name}", "", f"_model {s.model_id} · weights {s.weights_hash[:12]} · "
             f"branch {s.branches.index(s.branch) + 1}/{len(s.branches)} · exported "
             f"{time.strftime('%Y-%m-%d %H:%M')}_", ""]
    if s.system:
        lines += ["**System:** " + s.system, ""]
    for i, t in enumerate(s.turns):
        lines += ["**User:** " + t.user, "", "**Assistant:** " + t.answer, ""]
        m = t.metrics or {}
        if m:
            lines += [f"_{m.get('new_tokens', len(t.answer_ids))} tokens · prefill "
                      f"{m.get('prefill_tokens', '?')} · stop: {m.get('stop_reason', '?')}"
                      + (" · dropped from the context later" if i < s.live_from else "") + "_", ""]
    return printable("\n".join(lines), multiline=True)  # read in terminals too: data inert
