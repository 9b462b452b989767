"""A model's own sampling defaults, and where each sampling setting came from.

A model folder's ``generation_config.json`` says how its authors sample (Llama-3-Instruct:
temperature 0.6, top-p 0.9; Qwen2.5: also top-k 20 and a repetition penalty; a folder with
``do_sample: false`` asks for greedy decoding). Those values are the defaults a chat starts
from, unless the user typed a value (flag, Settings), chose a profile or saved one. The bundled
SmolLM2-135M-Instruct's converted folder has none, so its model card's values are used (the
card samples with temperature 0.2 and top-p 0.9).

Only the values a file writes explicitly count: transformers' ``GenerationConfig`` object fills
every attribute with its class default, so it cannot tell "the authors chose top-k 50" from
"nobody said", and the raw JSON is read instead. Torch-free."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from engine.bounds import bound_of
from engine.errors import InputError

#: the sampling settings a model's generation config may set, as SamplingConfig names them
MODEL_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
#: the bundled model's card (HuggingFaceTB/SmolLM2-135M-Instruct) samples with these
BUNDLED_CARD = {"temperature": 0.2, "top_p": 0.9}

#: provenance labels, weakest first: a later one overrides an earlier one
BUILT_IN, MODEL, MODEL_CARD, SAVED, PROFILE, FLAG = (
    "built-in", "model", "model card", "saved", "profile", "flag")
#: where a setting's value came from when a model's defaults may still replace it
REPLACEABLE = (BUILT_IN, MODEL, MODEL_CARD)

#: a generation_config.json is a few hundred bytes; a bigger one is not read
MAX_FILE_BYTES = 1_000_000


@dataclass(frozen=True)
class ModelSamplingDefaults:
    """The sampling values a model asks for (``values``: SamplingConfig field → value), where
    they came from (``source``: MODEL or MODEL_CARD; "" when the model says nothing) and what
    was skipped (``notes``: an out-of-range value, an unreadable file)."""

    values: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    notes: tuple[str, ...] = ()


def from_generation_config(raw: Mapping[str, Any]) -> ModelSamplingDefaults:
    """The defaults a generation config's explicit keys ask for. ``do_sample: false`` means
    greedy (temperature 0) whatever else it says; otherwise each explicit sampling key within
    SamplingConfig's declared bound is taken (a file with sampling values but no ``do_sample``
    is read as asking for them: transformers would warn and decode greedily, but the values say
    what the authors meant)."""
    from engine.lm.config import SamplingConfig

    if raw.get("do_sample") is False:
        return ModelSamplingDefaults({"temperature": 0.0}, MODEL,
                                     ("the model's generation config says do_sample: false "
                                      "(greedy)",))
    values: dict[str, Any] = {}
    notes: list[str] = []
    for key in MODEL_KEYS:
        if key not in raw or raw[key] is None:
            continue
        v = raw[key]
        bound = bound_of(SamplingConfig, key)
        try:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise InputError(f"{key} is not a number")
            if bound.kind == "int":
                if float(v) != int(v):
                    raise InputError(f"{key} {v!r} is not a whole number")
                v = int(v)
            else:
                v = float(v)
            bound.check(key, v)
        except (InputError, OverflowError, ValueError) as e:
            notes.append(f"generation config {key} skipped ({e})")
            continue
        if key == "temperature" and v == 0.0 and raw.get("do_sample") is True:
            notes.append("generation config temperature 0 with do_sample: true skipped")
            continue
        values[key] = v
    return ModelSamplingDefaults(values, MODEL if values else "", tuple(notes))


def read_generation_config(folder: Path) -> tuple[dict[str, Any], str]:
    """The raw ``generation_config.json`` of a model folder ({} when it has none) and a note
    when it could not be used (not a regular file, too large, not JSON, not a JSON object)."""
    from engine.bounded_json import BadJSON, loads, read_bytes

    p = Path(folder) / "generation_config.json"
    if not p.exists():
        return {}, ""
    try:
        data = loads(read_bytes(p, "generation config", MAX_FILE_BYTES), p.name)
    except BadJSON as e:
        return {}, f"{e}: built-in sampling defaults used"
    if not isinstance(data, dict):
        return {}, f"{p.name} is not a JSON object: built-in sampling defaults used"
    return data, ""


def model_sampling_defaults(folder: Path | str | None, bundled: bool = False) -> ModelSamplingDefaults:
    """What the model in ``folder`` asks for: its generation config's explicit values; for the
    bundled model, whose config has none, its card's; else nothing."""
    raw, note = read_generation_config(Path(folder)) if folder else ({}, "")
    d = from_generation_config(raw)
    notes = d.notes + ((note,) if note else ())
    if not d.values and bundled and raw.get("do_sample") is not False:
        return ModelSamplingDefaults(dict(BUNDLED_CARD), MODEL_CARD, notes)
    return ModelSamplingDefaults(d.values, d.source, notes)


def built_in_values() -> dict[str, Any]:
    """SamplingConfig's own defaults for ``MODEL_KEYS``."""
    from engine.lm.config import SamplingConfig

    cfg = SamplingConfig()
    return {k: getattr(cfg, k) for k in MODEL_KEYS}


def resolve(current: Mapping[str, Any], sources: Mapping[str, str],
            defaults: ModelSamplingDefaults) -> tuple[dict[str, Any], dict[str, str]]:
    """Apply a (newly loaded) model's defaults: every key whose value still comes from a
    default (built-in or an earlier model) takes this model's value; when this model says
    nothing, an earlier model's value goes back to the built-in one; values the user set (saved,
    profile, flag) stay.
    Returns the new values and sources for ``MODEL_KEYS``."""
    built_in = built_in_values()
    values: dict[str, Any] = {}
    out: dict[str, str] = {}
    for key in MODEL_KEYS:
        src = sources.get(key, BUILT_IN)
        if src not in REPLACEABLE:
            values[key], out[key] = current[key], src
        elif key in defaults.values:
            values[key], out[key] = defaults.values[key], defaults.source
        elif src == BUILT_IN:  # nobody chose it and this model says nothing: as it is
            values[key], out[key] = current[key], BUILT_IN
        else:  # the previous model's value: back to the built-in one
            values[key], out[key] = built_in[key], BUILT_IN
    return values, out
