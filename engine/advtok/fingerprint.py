"""The settings fingerprint of a dataset run: everything that decides what a row's record holds —
the model and its weights hash, dtype and forward, the chat template, the system prompt, every
attack and sampling setting, and the judges with their settings — kept on every row (``settings``
and its SHA-256 ``fingerprint``). Resuming into a results file whose rows were made with other
settings would mix two experiments in one file, so it is refused with one message naming the
first setting that differs.

Left out on purpose: the request, target and per-row system prompt (they are the row), and the
knobs that only change speed — scoring batch cap and token budget, judge batch size, thread
count, number of processes (rows are equal whatever they are; tested elsewhere)."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Optional, Sequence

from engine.errors import InputError

#: AttackConfig fields that are not run settings (the row itself, or speed only)
NOT_SETTINGS = frozenset({"request", "response", "system", "given_ids", "batch_cap",
                          "token_budget", "max_request_chars"})

#: how a setting is named in the message: the option that sets it
LABELS = {
    "attack.iters": "--iters", "attack.max_neighbours": "--max-neighbours",
    "attack.init": "--init", "attack.distance4": "--distance4", "attack.include_merges": "--merges",
    "attack.stochastic": "--stochastic", "attack.temperature": "--temperature",
    "attack.length_norm": "--no-length-norm", "attack.samples": "--samples",
    "attack.sample_max_new_tokens": "--sample-tokens",
    "attack.sample_temperature": "--sample-temperature", "attack.seed": "--seed",
    "attack.allow_plain_template": "--plain-template", "system": "--system / --template-system",
    "judges": "--judge", "model.weights_hash": "the model's weights (--model)",
    "model.name": "--model", "model.dtype": "--dtype", "model.engine_path": "--engine-path",
    "model.device": "--device", "template.sha256": "the chat template",
}


def judge_settings(judge: Any) -> dict[str, Any]:
    """A judge's id, whatever settings it declares (``settings``: a dict or a method returning
    one: prompt hash, threshold, token cap…) and its model's weights hash — a judge whose
    prompt, threshold or weights change changes the fingerprint."""
    s = getattr(judge, "settings", None)
    if callable(s):
        s = s()
    out = {"id": str(judge.id), **(dict(s) if isinstance(s, dict) else {})}
    lm = getattr(judge, "lm", None)
    if lm is not None and getattr(lm, "model", None) is not None:
        from engine.lm.weights_hash import weights_hash   # cached on the model

        out["weights_hash"] = weights_hash(lm.model)
    return out


def run_settings(*, attack: dict[str, Any], system: Optional[str], judges: Sequence[Any],
                 model: Optional[dict[str, Any]] = None,
                 template: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The settings of a run. Without ``model``/``template`` (before the model is loaded) the
    result holds only what is known then; :func:`check_resume` compares what both sides hold."""
    out: dict[str, Any] = {
        "attack": {k: attack[k] for k in sorted(attack) if k not in NOT_SETTINGS},
        "system": system,
        "judges": [judge_settings(j) if not isinstance(j, dict) else j for j in judges],
    }
    if model is not None:
        dev = str(model.get("device") or "")
        out["model"] = {"name": model.get("name"), "weights_hash": model.get("weights_hash"),
                        "dtype": model.get("dtype"), "engine_path": model.get("engine_path"),
                        "device": dev.split(":")[0]}   # cuda:0 and cuda:1 are one kind of device
    if template is not None:
        out["template"] = {"sha256": template.get("sha256", ""),
                           "has_template": template.get("has_template")}
    return out


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=False,
                                     default=str).encode()).hexdigest()


def _judge_ids(v: Any) -> list[str]:
    return [str(j.get("id")) if isinstance(j, dict) else str(j) for j in (v or [])]


def first_difference(old: Any, new: Any, path: str = "") -> Optional[tuple[str, Any, Any]]:
    """The first (path, old, new) where ``new`` differs from ``old``. At the top, over the parts
    both hold (a check before the model loads holds no model part); below, a key only one side
    has is a difference. Judges written before fingerprints are bare ids: compared by id."""
    if path == "judges":
        if _judge_ids(old) != _judge_ids(new):
            return path, ",".join(_judge_ids(old)) or "none", ",".join(_judge_ids(new)) or "none"
        for a, b in zip(old or [], new or []):
            if isinstance(a, dict) and isinstance(b, dict):
                d = first_difference(a, b, f"judges[{a.get('id')}]")
                if d is not None:
                    return d
        return None
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in old if k in new] if not path else list(dict.fromkeys([*old, *new]))
        for k in keys:
            d = first_difference(old.get(k), new.get(k), f"{path}.{k}" if path else k)
            if d is not None:
                return d
        return None
    return None if old == new else (path, old, new)


def recorded_settings(rec: dict[str, Any]) -> dict[str, Any]:
    """The settings a record was made with: its ``settings``, or for rows written before
    fingerprints, what the record itself shows (attack config, seed, model, template, judges)."""
    s = rec.get("settings")
    if isinstance(s, dict):
        return s
    out: dict[str, Any] = {}
    cfg = rec.get("config")
    if isinstance(cfg, dict):
        out["attack"] = {k: v for k, v in cfg.items() if k not in NOT_SETTINGS}
    if isinstance(rec.get("judges"), list):
        out["judges"] = [str(j) for j in rec["judges"]]
    if isinstance(rec.get("model"), dict):
        out["model"] = run_settings(attack={}, system=None, judges=[], model=rec["model"])["model"]
    if isinstance(rec.get("template"), dict):
        out["template"] = run_settings(attack={}, system=None, judges=[],
                                       template=rec["template"])["template"]
    return out


def _show(v: Any) -> str:
    if isinstance(v, str):
        return repr(v if len(v) <= 60 else v[:57] + "…")
    return json.dumps(v, default=str)


def check_resume(records: Iterable[dict[str, Any]], settings: dict[str, Any], out: Any) -> None:
    """InputError (one message naming the setting) when any finished row of ``out`` was made
    with settings other than ``settings``."""
    for rec in records:
        d = first_difference(recorded_settings(rec), settings)
        if d is None:
            continue
        path, was, now = d
        if path.startswith("judges["):
            judge, _, key = path[len("judges["):].partition("].")
            key = {"weights_hash": "weights", "prompt_sha256": "prompt"}.get(key, key)
            label = f"judge {judge}'s {key}"
        else:
            label = LABELS.get(path, path)
        raise InputError(
            f"{out} holds rows made with other settings: {label} was {_show(was)}, now "
            f"{_show(now)} (row {rec.get('id', rec.get('key'))!r}); resuming would mix two "
            "experiments in one file",
            hint="resume with the same settings, or write this run to another --out")
