"""Choosing a config profile in the TUI: one path for Settings (F6) and the model picker (F8).

A profile's values replace the current ones (AppSettings.apply_profile records what they
replaced, so choosing another profile, or none, puts those back); every open screen is told; a
profile naming another model, device, dtype, engine path or context size reloads the model,
as a switch in F8 does (the context size is set when a model loads)."""
from __future__ import annotations

from typing import Any

from app.messages import SettingsChanged

#: the Select value that means "no profile"
NO_PROFILE = ""


def profile_options(settings: Any) -> list[tuple[str, str]]:
    """(label, value) for a Select: "no profile" first, then the config's profiles by name."""
    return [("no profile", NO_PROFILE)] + [(n, n) for n in sorted(settings.profiles or {})]


def profile_summary(settings: Any) -> str:
    """What the profile in use sets, in words (plain text: names come from the user's file)."""
    if not settings.profile:
        return ("no profile" if settings.profiles else
                "no profiles in the config file (--config, $TOKENFORGE_CONFIG)")
    keys = [k for k in settings.profile_base if settings.source_of(k) == "profile"]
    if not keys:
        return f"profile {settings.profile}: sets nothing still in use"
    names = [k.replace("timeout:", "timeout ").replace("_", " ") for k in keys]
    return f"profile {settings.profile} sets: " + ", ".join(names)


def choose_profile(app: Any, name: str) -> tuple[bool, bool]:
    """Use profile ``name`` (NO_PROFILE: none). Returns (changed, reloading)."""
    s = app.settings
    if name == s.profile or (name and name not in (s.profiles or {})):
        return False, False
    reload = s.apply_profile(s.profiles[name], model_fields=True) if name else s.clear_profile()
    app.notify_screens(SettingsChanged)
    if reload:  # a load already running is cancelled and started again with these settings
        app.load_model()
    return True, reload
