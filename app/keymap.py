"""User key overrides: a JSON object {binding id: keys}, e.g. {"chat.new": "ctrl+b", "quit": "ctrl+x"}.

Read from ``$TOKENFORGE_KEYMAP`` or ``$XDG_CONFIG_HOME/tokenforge/keymap.json`` (~/.config/…). Every Binding in the app
has an ``id`` (see the BINDINGS of app/app.py and app/screens/*), applied with ``App.set_keymap``.
A broken file is ignored with one message; the default keys stay.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

_KEYS = re.compile(r"^[a-z0-9_+\-,. ]+$")


def keymap_path() -> Path:
    from engine.paths import config_file

    return config_file("keymap.json", "TOKENFORGE_KEYMAP")


def load_keymap(path: Optional[Path] = None) -> tuple[dict[str, str], Optional[str]]:
    """(binding id → keys, None) or ({}, why the file was ignored). No file: ({}, None)."""
    p = path or keymap_path()
    if not p.exists():
        return {}, None
    from engine.bounded_json import load
    from engine.errors import InputError

    try:
        data = load(p, "keymap", max_bytes=1 << 20)
    except InputError as e:
        return {}, f"keymap {p} ignored: {e}"
    if not isinstance(data, dict):
        return {}, f"keymap {p} ignored: expected an object of binding id → keys"
    out: dict[str, str] = {}
    for k, v in data.items():
        if not isinstance(k, str) or not isinstance(v, str) or not v.strip() \
                or not _KEYS.match(v.strip().lower()):
            return {}, f"keymap {p} ignored: bad entry {k!r}: {v!r}"
        out[k] = v.strip().lower()
    return out, None
