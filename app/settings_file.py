"""Settings that persist across restarts: one small JSON file, written atomically
(engine.atomic) each time Settings are applied, read at start-up.

Where: ``$TOKENFORGE_SETTINGS``, else ``$XDG_CONFIG_HOME/tokenforge/settings.json`` (beside the
profiles' config.toml of app/commands/profile_args.py, which stays the user's hand-edited file:
a profile named on the command line is applied after this and wins). Saved: sampling, the
timeouts the user typed, the export folder, the system prompt. Every value is validated again on
load against the same declared bounds as the form (engine.bounds); a bad or foreign file is
ignored with one warning, never half-applied."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

from engine.errors import InputError
from engine.paths import expand_user
from engine.lm.sampling_defaults import MODEL_KEYS, SAVED
from engine.bounded_json import loads as bounded_loads  # bounded depth: never a RecursionError
from engine.bounded_json import read_text as bounded_read_text  # regular files only, bounded

VERSION = 1


def settings_path() -> Path:
    from engine.paths import config_file

    return config_file("settings.json", "TOKENFORGE_SETTINGS")


def to_json(s: Any) -> str:
    from engine.sessions.profiles import TIMEOUT_KINDS

    # without the profile in use: its values live in its config file (s.unprofiled)
    sampling = {k: s.unprofiled(k) if k in s.profile_base else v
                for k, v in asdict(s.sampling).items()}
    timeouts = {kind: s.unprofiled(f"timeout:{kind}") for kind in TIMEOUT_KINDS}
    data = {"version": VERSION,
            "sampling": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sampling.items()},
            # the sampling values the user set (the others follow the loaded model's defaults)
            "sampling_set": sorted(k for k, src in s.sampling_sources.items() if src == SAVED),
            "user_timeouts": {k: secs for k, (secs, user) in sorted(timeouts.items()) if user},
            "export_dir": str(s.export_dir),
            "system_prompt": s.unprofiled("system_prompt")}
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def save(s: Any, path: Optional[Path] = None) -> Path:
    """Write the settings file atomically (raises OSError when it cannot be written)."""
    from engine.atomic import write_text

    p = path or settings_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    write_text(p, to_json(s))
    return p


def load_into(s: Any, path: Optional[Path] = None) -> str:
    """Apply a saved file to ``s``; returns a warning ("" when fine or absent). All values are
    checked before any is applied."""
    from engine.bounds import bounded_fields
    from engine.lm.config import ChatConfig, SamplingConfig
    from engine.sessions.profiles import TIMEOUT, TIMEOUT_KINDS

    p = path or settings_path()
    if not os.path.lexists(p):
        return ""
    try:  # a regular file only (a FIFO would hang the start), bounded, UTF-8
        raw = bounded_read_text(p, "settings file", 1_000_000)
    except InputError as e:
        return f"settings file unreadable ({e}); defaults used"
    try:
        if len(raw) > 1_000_000:
            raise InputError("too large")
        data = bounded_loads(raw, "settings file")
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise InputError("not a tokenforge settings file of this version")
        sm = data.get("sampling", {})
        if not isinstance(sm, dict):
            raise InputError("sampling")
        # every value (stop strings and banned ids too) against the bounds declared on
        # SamplingConfig's fields, as the form does
        defaults = SamplingConfig()
        sampling = SamplingConfig(**{k: sm.get(k, getattr(defaults, k))
                                     for k, _ in bounded_fields(SamplingConfig)}).validate()
        chosen = data.get("sampling_set")
        if chosen is None:  # written before the list existed: what differs from the built-in
            chosen = [k for k in MODEL_KEYS if getattr(sampling, k) != getattr(defaults, k)]
        if not isinstance(chosen, list) or not all(isinstance(k, str) for k in chosen) \
                or not set(chosen) <= set(MODEL_KEYS):
            raise InputError("sampling_set")
        timeouts = data.get("user_timeouts", {})
        if not isinstance(timeouts, dict) or not set(timeouts) <= set(TIMEOUT_KINDS):
            raise InputError("user_timeouts")
        for kind, v in timeouts.items():
            TIMEOUT.check(f"{kind} timeout", v)
        export, system = data.get("export_dir"), data.get("system_prompt", s.system_prompt)
        if not isinstance(export, str) or not export.strip():
            raise InputError("export_dir")
        ChatConfig(system=system).validate()
    except (ValueError, InputError) as e:
        return f"settings file {p} ignored ({e}); defaults used"
    for k in MODEL_KEYS:  # the rest stay defaults, for the model's own values to replace
        if k not in chosen:
            setattr(sampling, k, getattr(defaults, k))
    s.sampling = sampling
    s.sampling_sources.update({k: SAVED for k in chosen})
    s.export_dir = expand_user(export, "export_dir")
    s.system_prompt = system
    s.rederive()
    for kind, secs in timeouts.items():
        s.set_user_timeout(kind, None if secs is None else float(secs))
    return ""
