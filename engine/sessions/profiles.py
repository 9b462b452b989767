"""The user's TOML config: named profiles (model, device/dtype, context size, sampling, system
prompt, per-kind timeouts) plus a few global keys. Read with stdlib ``tomllib``.

Where it is: ``--config PATH`` > ``$TOKENFORGE_CONFIG`` > ``$XDG_CONFIG_HOME/tokenforge/config.toml``
(``~/.config/tokenforge/config.toml``). A missing default file is an empty config; a missing file
that was named explicitly is an error. Every problem — TOML syntax, an unknown key, a value of the
wrong type — is one :class:`ConfigError` naming the file, the line and the key, because a config
typo silently ignored is a run with the wrong model.

Example::

    default_profile = "terse"
    model_dirs = ["~/models"]          # extra places the model picker looks
    snapshot_cap_mib = 512             # KV snapshots kept on disk, oldest removed first

    [profiles.terse]
    model = "default"
    temperature = 0.2                  # also: top_p, top_k, min_p, repetition_penalty
    banned_ids = [2]                   # token ids never generated
    max_new_tokens = 128
    stop = ["\\n\\n"]
    system_prompt = "Be terse."
    [profiles.terse.timeouts]
    chat = 60
"""
from __future__ import annotations

import math
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from engine.bounds import Bound, bound_of
from engine.errors import InputError
from engine.paths import expand_user

ENV_VAR = "TOKENFORGE_CONFIG"
#: the job kinds that have a timeout (the config's [profiles.X.timeouts], the settings file and
#: the Settings screen all name these)
TIMEOUT_KINDS = ("chat", "advtok", "tree", "bench", "vocab", "speed")
#: a job's timeout in seconds: at least one second (less cannot even start a model call), at
#: most a week (a bench grid of days is a mistake, not a plan); None = no limit
TIMEOUT = Bound(kind="float", lo=1.0, hi=7 * 24 * 3600.0, optional=True, label="timeout")


class ConfigError(InputError):
    """A config file that cannot be used as written."""


@dataclass(frozen=True)
class Profile:
    """One named set of defaults; None = not set here (the built-in default applies)."""

    name: str
    model: Optional[str] = None
    device: Optional[str] = None
    dtype: Optional[str] = None
    engine_path: Optional[str] = None
    context_size: Optional[int] = None
    max_new_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    banned_ids: Optional[tuple[int, ...]] = None
    stop: Optional[tuple[str, ...]] = None
    system_prompt: Optional[str] = None
    timeouts: dict[str, Optional[float]] = field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        """The keys this profile sets (timeouts excluded)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("name", "timeouts") and getattr(self, f.name) is not None}


@dataclass
class Config:
    path: Optional[Path] = None
    default_profile: Optional[str] = None
    model_dirs: list[Path] = field(default_factory=list)
    snapshot_cap_mib: float = 512.0
    profiles: dict[str, Profile] = field(default_factory=dict)

    def profile(self, name: Optional[str]) -> Optional[Profile]:
        """The named profile (or the config's default_profile when name is None)."""
        name = name if name is not None else self.default_profile
        if name is None:
            return None
        if name not in self.profiles:
            known = ", ".join(sorted(self.profiles)) or "none defined"
            where = f" in {self.path}" if self.path else ""
            raise ConfigError(f"unknown profile {name!r}{where} (profiles: {known})")
        return self.profiles[name]


def config_path(flag: Optional[str] = None) -> tuple[Path, bool]:
    """(path, explicit): the flag, else the environment variable, else the default location.
    Only a typed ``--config`` must exist; the variable, like the default, names where the config
    lives, and a file not written yet means no config."""
    from engine.paths import config_file

    if flag:
        return expand_user(flag, "--config"), True
    return config_file("config.toml", ENV_VAR), False


# key -> (types accepted, description for the message)
_PROFILE_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "model": ((str,), "a string"), "device": ((str,), "a string"), "dtype": ((str,), "a string"),
    "engine_path": ((str,), "a string"),
    "context_size": ((int,), "an integer"), "max_new_tokens": ((int,), "an integer"),
    "temperature": ((int, float), "a number"), "top_p": ((int, float), "a number"),
    "top_k": ((int,), "an integer"), "min_p": ((int, float), "a number"),
    "repetition_penalty": ((int, float), "a number"),
    "banned_ids": ((list,), "a list of token ids"), "stop": ((list,), "a list of strings"),
    "system_prompt": ((str,), "a string"), "timeouts": ((dict,), "a table"),
}
_TOP_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "default_profile": ((str,), "a string"), "model_dirs": ((list,), "a list of strings"),
    "snapshot_cap_mib": ((int, float), "a number"), "profiles": ((dict,), "a table"),
}
def _declared(key: str) -> Optional[Bound]:
    """The bound a profile key shares with the engine's settings (declared once, on the
    config field); None for keys checked here (model, timeouts)."""
    from engine.lm.config import ChatConfig, ModelConfig, SamplingConfig

    where = {"context_size": (ModelConfig, "context_size"), "device": (ModelConfig, "device"),
             "engine_path": (ModelConfig, "engine_path"), "dtype": (ModelConfig, "dtype"),
             "max_new_tokens": (SamplingConfig, "max_new_tokens"),
             "temperature": (SamplingConfig, "temperature"), "top_p": (SamplingConfig, "top_p"),
             "top_k": (SamplingConfig, "top_k"), "min_p": (SamplingConfig, "min_p"),
             "repetition_penalty": (SamplingConfig, "repetition_penalty"),
             "banned_ids": (SamplingConfig, "banned_ids"), "stop": (SamplingConfig, "stop_strings"),
             "system_prompt": (ChatConfig, "system")}
    return bound_of(*where[key]) if key in where else None


def _kind(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "table"}.get(type(v), type(v).__name__)


class _Lines:
    """Finds the line of a dotted key in the TOML text (tomllib gives values, not positions)."""

    _HEADER = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
    _KEY = re.compile(r"^\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_-]+)\s*=")

    def __init__(self, text: str) -> None:
        self.index: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        for n, line in enumerate(text.split("\n"), 1):  # TOML lines end at \n only
            m = self._HEADER.match(line)
            if m:
                table = tuple(_unquote(p) for p in _split_dotted(m.group(1)))
                self.index.setdefault(table, n)
                continue
            k = self._KEY.match(line)
            if k:
                self.index.setdefault(table + (_unquote(k.group(1)),), n)

    def line(self, *key: str) -> Optional[int]:
        while key:
            if key in self.index:
                return self.index[key]
            key = key[:-1]
        return None


def _split_dotted(s: str) -> list[str]:
    return [p.strip() for p in re.findall(r"\"[^\"]*\"|'[^']*'|[^.]+", s)]


def _unquote(s: str) -> str:
    s = s.strip()
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'" else s


def load_config(flag: Optional[str] = None) -> Config:
    """Read and validate the config file (see the module docstring for where it is)."""
    path, explicit = config_path(flag)
    if not path.exists():
        if explicit:
            raise ConfigError(f"config file not found: {path}")
        return Config()
    from engine.bounded_json import read_text
    from engine.errors import InputError

    try:  # bounded size, line-numbered UTF-8 errors (engine.bounded_json)
        text = read_text(path, "config", max_bytes=4 << 20)
    except InputError as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    return parse_config(text, path)


def parse_config(text: str, path: Optional[Path] = None) -> Config:
    where = str(path) if path else "config"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        line = f" line {m.group(1)}" if m else ""
        raise ConfigError(f"{where}{line}: not valid TOML: {str(e).split(' (at')[0]}") from e
    except RecursionError:  # tomllib recurses per nested array / inline table
        raise ConfigError(f"{where}: nested too deeply to be a config") from None
    except ValueError as e:  # an integer past Python's int-string limit (tomllib calls int())
        m = re.search(r"\d{%d,}" % (sys.get_int_max_str_digits() + 1), text)
        line = f" line {text.count(chr(10), 0, m.start()) + 1}" if m else ""
        raise ConfigError(f"{where}{line}: a number with more than "
                          f"{sys.get_int_max_str_digits():,} digits") from e
    lines = _Lines(text)

    def bad(key: tuple[str, ...], why: str) -> ConfigError:
        n = lines.line(*key)
        return ConfigError(f"{where}{f' line {n}' if n else ''}: {'.'.join(key)} {why}")

    def check(key: tuple[str, ...], v: Any, spec: tuple[tuple[type, ...], str]) -> None:
        types, desc = spec
        if isinstance(v, bool) or not isinstance(v, types):  # bool is an int subclass
            if not (isinstance(v, bool) and bool in types):
                raise bad(key, f"must be {desc}, not a {_kind(v)} ({v!r})")

    cfg = Config(path=path)
    for k, v in data.items():
        if k not in _TOP_KEYS:
            raise bad((k,), f"is not a known key (known: {', '.join(_TOP_KEYS)})")
        check((k,), v, _TOP_KEYS[k])
    if "model_dirs" in data:
        for i, d in enumerate(data["model_dirs"]):
            if not isinstance(d, str):
                raise bad(("model_dirs",), f"must be a list of strings (item {i} is a {_kind(d)})")
        cfg.model_dirs = [expand_user(d, "model_dirs") for d in data["model_dirs"]]
    if "snapshot_cap_mib" in data:
        if not math.isfinite(data["snapshot_cap_mib"]) or data["snapshot_cap_mib"] < 0:
            raise bad(("snapshot_cap_mib",), f"must be a finite number ≥ 0, not {data['snapshot_cap_mib']}")
        cfg.snapshot_cap_mib = float(data["snapshot_cap_mib"])
    for name, body in data.get("profiles", {}).items():
        if not isinstance(body, dict):
            raise bad(("profiles", name), f"must be a table, not a {_kind(body)}")
        cfg.profiles[name] = _profile(name, body, check, bad)
    cfg.default_profile = data.get("default_profile")
    if cfg.default_profile is not None and cfg.default_profile not in cfg.profiles:
        raise bad(("default_profile",), f"names no profile ({cfg.default_profile!r})")
    return cfg


def _profile(name: str, body: dict[str, Any], check: Any, bad: Any) -> Profile:
    kw: dict[str, Any] = {}
    for k, v in body.items():
        key = ("profiles", name, k)
        if k not in _PROFILE_KEYS:
            raise bad(key, f"is not a known profile key (known: {', '.join(_PROFILE_KEYS)})")
        check(key, v, _PROFILE_KEYS[k])
        declared = _declared(k)
        why = declared.why_not(v) if declared is not None else None
        if why is not None:
            raise bad(key, why)
        if k == "stop":
            if not all(isinstance(s, str) and s for s in v):
                raise bad(key, "must be a list of non-empty strings")
            v = tuple(v)
        if k == "banned_ids":
            v = tuple(v)
        if k == "timeouts":
            v = _timeouts(key, v, bad)
        kw[k] = float(v) if k in ("temperature", "top_p", "min_p", "repetition_penalty") else v
    return Profile(name=name, **kw)


def _timeouts(key: tuple[str, ...], table: dict[str, Any], bad: Any) -> dict[str, Optional[float]]:
    out: dict[str, Optional[float]] = {}
    for kind, secs in table.items():
        k = key + (kind,)
        if kind not in TIMEOUT_KINDS:
            raise bad(k, f"is not a job kind (kinds: {', '.join(TIMEOUT_KINDS)})")
        if secs is False or (isinstance(secs, str) and secs == "none"):
            out[kind] = None  # no limit
            continue
        if isinstance(secs, bool) or not isinstance(secs, (int, float)):
            raise bad(k, f"must be seconds (a number) or \"none\", not a {_kind(secs)} ({secs!r})")
        why = TIMEOUT.why_not(secs)
        if why is not None:
            raise bad(k, f"is in seconds and {why}")
        out[kind] = float(secs)
    return out


def resolve(explicit: dict[str, Any], profile: Optional[Profile],
            defaults: dict[str, Any]) -> dict[str, Any]:
    """Precedence flag > profile > default, key by key: ``explicit`` holds only the values the
    user gave (flags), ``defaults`` every key's built-in value."""
    out = dict(defaults)
    if profile is not None:
        out.update({k: v for k, v in profile.values().items() if k in defaults})
    out.update({k: v for k, v in explicit.items() if k in defaults})
    return out
