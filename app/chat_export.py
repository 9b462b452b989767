"""Writing a conversation out: Markdown + JSON side by side, each file atomic (engine.atomic),
named by the time of the export so earlier exports are never overwritten. The JSON is the one
export envelope of every job (engine/export.py; built by the session's ``to_json``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def export_conversation(session: Any, folder: Path | str) -> tuple[Path, Path]:
    """Write ``session.to_markdown()`` and ``session.to_json()`` into ``folder`` (created if
    missing). Raises OSError when the folder cannot be written."""
    from engine.atomic import write_text
    from engine.export import unique_paths

    md, js = unique_paths(folder, "chat", (".md", ".json"))
    md.parent.mkdir(parents=True, exist_ok=True)
    write_text(md, session.to_markdown())
    write_text(js, session.to_json())
    return md, js
