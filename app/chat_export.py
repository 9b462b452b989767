"""Writing a conversation out: Markdown + JSON side by side, each file atomic (engine.atomic),
named by the time of the export so earlier exports are never overwritten."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any


def export_conversation(session: Any, folder: Path | str) -> tuple[Path, Path]:
    """Write ``session.to_markdown()`` and ``session.to_json()`` into ``folder`` (created if
    missing). Raises OSError when the folder cannot be written."""
    from engine.atomic import write_text

    folder = Path(folder).expanduser()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    md, js = folder / f"chat-{stamp}.md", folder / f"chat-{stamp}.json"
    n = 1
    while md.exists() or js.exists():  # two exports within one second
        n += 1
        md, js = folder / f"chat-{stamp}-{n}.md", folder / f"chat-{stamp}-{n}.json"
    folder.mkdir(parents=True, exist_ok=True)
    write_text(md, session.to_markdown())
    write_text(js, session.to_json())
    return md, js
