"""What the user can change at run time: model, sampling, engine path, timeouts, export folder.

Sampling is the engine's own torch-free ``SamplingConfig`` (engine/lm/config.py), bounds and
all. Timeout defaults are derived from the loaded model's measured decode speed, so a
long answer on a slow CPU is not killed by a fixed limit, and held within [30 s, 30 min] so an
unknown or absurd speed never means "no answer for hours". The bench is the exception: it sizes
itself to the dashboard's grid (methods × queries × (repeats + 1) runs of its max new tokens; the
extra run per query covers the baseline reference, warm-up and quality passes) and may take hours,
so it is held within [30 s, 12 h]. Each derivation is kept (``TimeoutDerivation``) so the settings
screen can show it; a timeout the user types is theirs until they re-derive.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from app.settings_file import load_into
from engine.lm.config import SamplingConfig
from engine.lm.sampling_defaults import (BUILT_IN, MODEL_KEYS, PROFILE, SAVED,
                                         ModelSamplingDefaults, built_in_values, resolve)
#: kinds whose timeouts the settings screen shows (load has none: Ctrl+C stops it), and the
#: bound of each (declared with the config file's timeouts table)
from engine.sessions.profiles import TIMEOUT, TIMEOUT_KINDS  # noqa: F401  (re-exported)

#: how many "answers" of max_new_tokens each kind is allowed before its timeout: a tree search
#: runs dozens of rollouts, AdvTok samples and scores many candidates, a bench sweeps a suite
WORK_FACTOR = {"chat": 1.0, "advtok": 40.0, "tree": 60.0, "bench": 200.0}
SAFETY = 3.0          # measured speed varies with context length and with other load on the CPU
FLOOR_S = 30.0        # a derived limit never below this (warm-up, first-call overheads)
CAP_S = 1800.0        # nor above 30 min: an unknown or very slow speed must not mean "hours"
ASSUMED_TOK_S = 2.0   # before anything was measured: a slow CPU, so nothing legit is killed
BENCH_CAP_S = 12 * 3600.0  # a grid is left running; hours are legitimate, days are not
FIXED = {"vocab": 300.0, "speed": 120.0}
FIXED_WHY = {"vocab": "vocabulary build, no token budget", "speed": "the 8-token speed probe"}


def fmt_duration(seconds: Optional[float]) -> str:
    """'45 s', '12.5 min', '2.0 h'; None → 'none'."""
    if seconds is None:
        return "none"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min".replace(".0 min", " min")
    return f"{seconds / 3600:.1f} h"


def over_timeout(what: str, tokens: int, tok_s: Optional[float],
                 timeout: Optional[float]) -> Optional[str]:
    """Said before a job starts when its token budget, at the measured decode speed, cannot
    finish inside its timeout (None when it can, or when no speed was measured yet: the
    assumed 2 tok/s would warn about every job)."""
    if timeout is None or not tok_s or tok_s <= 0 or not math.isfinite(tok_s) or tokens <= 0:
        return None
    need = tokens / tok_s
    if need <= timeout:
        return None
    return (f"{what} needs ≈ {tokens:,} tokens ≈ {fmt_duration(need)} at the measured "
            f"{tok_s:.1f} tok/s, over its {fmt_duration(timeout)} timeout: it will stop early "
            "(raise the timeout in Settings, F6)")


@dataclass(frozen=True)
class BenchGrid:
    """The dashboard's chosen grid, as far as its timeout is concerned."""

    methods: int
    queries: int
    repeats: int
    max_new_tokens: int
    prose: bool = False  # held-out prose NLL: about one more run per method

    @property
    def runs(self) -> int:
        """Generations of ``max_new_tokens`` the grid is budgeted for: every (method, query)
        measured ``repeats`` times plus one (reference, warm-up, teacher-forced quality)."""
        return self.methods * self.queries * (self.repeats + 1) + (self.methods if self.prose else 0)

    def describe(self) -> str:
        s = (f"{self.methods} method{'s' * (self.methods != 1)} × {self.queries} "
             f"quer{'ies' if self.queries != 1 else 'y'} × ({self.repeats}+1)")
        return s + (f" + {self.methods} prose" if self.prose else "")


@dataclass(frozen=True)
class TimeoutDerivation:
    """How one kind's default timeout was derived: ``budget_tokens ÷ tok_s × margin``, rounded
    up to 10 s, then held within [FLOOR_S, CAP_S] (``limit`` says which bound applied)."""

    kind: str
    seconds: Optional[float]
    tok_s: Optional[float] = None
    measured: bool = False
    budget_tokens: Optional[int] = None
    factor: float = 1.0
    margin: float = SAFETY
    raw_s: Optional[float] = None
    limit: str = ""  # "", "floor", "cap", "fixed", "none"
    grid: str = ""   # bench only: the dashboard grid the budget was sized for

    def explain(self) -> str:
        if self.limit == "none":
            return "no limit (Ctrl+C stops it)"
        if self.limit == "fixed":
            return f"fixed {fmt_duration(self.seconds)} ({FIXED_WHY.get(self.kind, 'no token budget')})"
        budget = (f"{self.budget_tokens:,} tokens" if self.factor == 1 else
                  f"{self.factor:g}×{(self.budget_tokens or 0) / self.factor:,.0f} = "
                  f"{self.budget_tokens:,} tokens")
        if self.grid:
            budget = f"grid {self.grid} = {self.factor:g} runs × " \
                     f"{(self.budget_tokens or 0) / self.factor:,.0f} = {self.budget_tokens:,} tokens"
        speed = f"{self.tok_s:.1f} tok/s {'measured' if self.measured else 'assumed'}"
        s = f"{budget} ÷ {speed} × {self.margin:g} margin = {fmt_duration(self.raw_s)}"
        if self.limit == "floor":
            s += f" → floor {fmt_duration(self.seconds)}"
        elif self.limit == "cap":
            s += f" → cap {fmt_duration(self.seconds)}"
        return s


def derive_timeout_details(tok_s: Optional[float], max_new_tokens: int,
                           bench_grid: Optional[BenchGrid] = None) -> dict[str, TimeoutDerivation]:
    """Per job kind: the default timeout and how it was derived from the decode speed.
    Unknown speed → a conservative ASSUMED_TOK_S guess. The bench is sized to ``bench_grid``
    (the dashboard's form) when known, else WORK_FACTOR answers of ``max_new_tokens``."""
    measured = tok_s is not None and tok_s > 0 and math.isfinite(tok_s)
    rate = float(tok_s) if measured else ASSUMED_TOK_S  # type: ignore[arg-type]
    out: dict[str, TimeoutDerivation] = {"load": TimeoutDerivation("load", None, limit="none")}
    for kind, factor in WORK_FACTOR.items():
        grid, per = "", max_new_tokens
        if kind == "bench" and bench_grid is not None and bench_grid.runs > 0:
            factor, per, grid = float(bench_grid.runs), bench_grid.max_new_tokens, \
                bench_grid.describe()
        budget = int(round(factor * per))
        raw = SAFETY * budget / rate
        secs = math.ceil(raw / 10.0) * 10.0
        cap = BENCH_CAP_S if kind == "bench" else CAP_S
        limit = ""
        if secs < FLOOR_S:
            secs, limit = FLOOR_S, "floor"
        elif secs > cap:
            secs, limit = cap, "cap"
        out[kind] = TimeoutDerivation(kind, float(secs), rate, measured, budget, factor, SAFETY,
                                      raw, limit, grid)
    for kind, secs in FIXED.items():
        out[kind] = TimeoutDerivation(kind, secs, limit="fixed")
    return out


def derive_timeouts(tok_s: Optional[float], max_new_tokens: int,
                    bench_grid: Optional[BenchGrid] = None) -> dict[str, Optional[float]]:
    """Seconds per job kind (None = no limit), see ``derive_timeout_details``."""
    return {k: d.seconds
            for k, d in derive_timeout_details(tok_s, max_new_tokens, bench_grid).items()}


#: what a config profile may set, by the AppSettings / SamplingConfig attribute it sets
SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                 "banned_ids", "stop_strings")
MODEL_FIELDS = ("model", "device", "dtype", "engine_path")
PROFILE_KEYS = SAMPLING_KEYS + ("system_prompt", "context_size") + MODEL_FIELDS
#: a change to one of these takes a model (re)load to apply (the context size is set at load)
RELOAD_KEYS = ("model", "device", "dtype", "engine_path", "context_size")


def default_export_dir() -> Path:
    """Exports go to a per-user data folder, not wherever the app was started:
    ``$TOKENFORGE_EXPORTS``, else ``$XDG_DATA_HOME/tokenforge/exports`` (~/.local/share/…)."""
    from engine.paths import data_dir

    return data_dir("exports", "TOKENFORGE_EXPORTS")


@dataclass
class AppSettings:
    model: str = "default"
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    engine_path: str = "fast"
    system_prompt: str = "You are a helpful assistant."
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    #: where each model-defaultable sampling value came from (engine.lm.sampling_defaults):
    #: built-in, model, model card, saved, profile or flag
    sampling_sources: dict[str, str] = field(
        default_factory=lambda: {k: BUILT_IN for k in MODEL_KEYS})
    timeouts: dict[str, Optional[float]] = field(default_factory=lambda: derive_timeouts(None, 256))
    #: kinds whose timeout the user typed; re-deriving leaves those alone
    user_timeouts: set[str] = field(default_factory=set)
    measured_tok_s: Optional[float] = None
    speed_source: str = ""  # "speed probe", "first answer" or "median of N runs"
    #: decode speeds measured so far (the probe, then real answers): the timeouts follow their
    #: running median, so one slow or fast run (a busy machine) does not set them alone
    speed_samples: list[float] = field(default_factory=list)
    #: the dashboard's current grid (set by the dashboard as its form changes); sizes "bench"
    bench_grid: Optional[BenchGrid] = None
    export_dir: Path = field(default_factory=default_export_dir)
    #: at most this many tokens of context (a profile's context_size); None = the model's window
    context_size: Optional[int] = None
    profile: str = ""  # the profile in use, for display
    load_warning: str = ""  # why the saved settings file was not used (shown once at start)
    snapshot_cap_mib: float = 512.0  # saved sessions' KV snapshots on disk (config key)
    model_dirs: list[Path] = field(default_factory=list)  # extra folders for the model picker
    profiles: dict[str, Any] = field(default_factory=dict)  # the config's profiles, by name
    #: what the profile in use replaced, per key (PROFILE_KEYS or "timeout:KIND"): (the value
    #: before, its source, the profile's value). Choosing another profile, or none, puts back
    #: every value still at the profile's (one the user changed since stays theirs)
    profile_base: dict[str, tuple[Any, Optional[str], Any]] = field(default_factory=dict)
    #: the loaded model's own sampling defaults (a value a profile held goes back to them)
    model_defaults: Optional[ModelSamplingDefaults] = None

    def __post_init__(self) -> None:
        # sampling handed in already chosen (a caller's own SamplingConfig): those values are
        # the caller's, not defaults a model may replace
        built_in = built_in_values()
        for k in MODEL_KEYS:
            if self.sampling_sources.get(k, BUILT_IN) == BUILT_IN and \
                    getattr(self.sampling, k) != built_in[k]:
                self.sampling_sources[k] = SAVED

    @classmethod
    def from_args(cls, args: Any, saved: bool = True) -> "AppSettings":
        """Defaults, then the saved settings file (app/settings_file.py), then the command line
        and its profile (which win)."""
        s = cls()
        if saved:
            s.load_warning = load_into(s)
        if args is not None:
            s.model = getattr(args, "model", s.model) or s.model
            s.device = getattr(args, "device", s.device) or s.device
            s.dtype = getattr(args, "dtype", s.dtype) or s.dtype
            s.trust_remote_code = bool(getattr(args, "trust_remote_code", False))
            s.engine_path = getattr(args, "engine_path", s.engine_path) or s.engine_path
            s.context_size = getattr(args, "context_size", None)
            conf = getattr(args, "tf_config", None)
            if conf is not None:
                s.snapshot_cap_mib = conf.snapshot_cap_mib
                s.model_dirs = list(conf.model_dirs)
                s.profiles = dict(conf.profiles)
            profile = getattr(args, "tf_profile", None)
            if profile is not None:
                s.apply_profile(profile)
                # the command line resolved these from the profile (a flag winning): what the
                # profile set is the profile's, for a switch in the TUI to put back
                for key in MODEL_FIELDS + ("context_size",):
                    theirs = getattr(profile, key)
                    if theirs is not None and getattr(s, key) == theirs:
                        s.profile_base[key] = (getattr(cls(), key), None, theirs)
        return s

    def apply_profile(self, p: Any, *, model_fields: bool = False) -> bool:
        """Use config profile ``p`` (after putting back what the previous one replaced): its
        sampling, system prompt, context size and timeouts; with ``model_fields`` also its model,
        device, dtype and engine path (the command line resolves those itself, a flag winning).
        True when a value the loaded model depends on changed (the caller reloads)."""
        reload = self.clear_profile()
        self.profile = p.name
        sm = self.sampling
        for key in PROFILE_KEYS:
            theirs = getattr(p, "stop" if key == "stop_strings" else key)
            if theirs is None or (key in MODEL_FIELDS and not model_fields):
                continue
            if key == "context_size" and not model_fields and self.context_size is not None:
                continue  # a --context-size flag wins
            if key == "stop_strings":
                theirs = tuple(theirs)
            before = self._value(key)
            self.profile_base[key] = (before, self.sampling_sources.get(key), theirs)
            if key in SAMPLING_KEYS:
                setattr(sm, key, theirs)
            else:
                setattr(self, key, theirs)
            if key in self.sampling_sources:
                self.sampling_sources[key] = PROFILE
            reload |= key in RELOAD_KEYS and before != theirs
        self.rederive()
        for kind, secs in p.timeouts.items():
            key = f"timeout:{kind}"
            self.profile_base[key] = (self._value(key), None, (secs, True))
            self.set_user_timeout(kind, secs)
        return reload

    def clear_profile(self) -> bool:
        """Stop using the profile: every value it set and nobody changed since goes back to
        what it was before (a sampling value that followed the model follows the loaded model
        again). True when a value the loaded model depends on changed."""
        reload = False
        for key, (before, source, theirs) in self.profile_base.items():
            if self._value(key) != theirs:
                continue  # changed since (Settings applied, the chat's system prompt): theirs
            if key.startswith("timeout:"):
                kind, (secs, user) = key.split(":", 1)[1], before
                if user:
                    self.set_user_timeout(kind, secs)
                else:
                    self.user_timeouts.discard(kind)
                continue
            if key in SAMPLING_KEYS:
                setattr(self.sampling, key, before)
            else:
                setattr(self, key, before)
            if source is not None:
                self.sampling_sources[key] = source
            reload |= key in RELOAD_KEYS
        self.profile_base.clear()
        self.profile = ""
        if self.model_defaults is not None:  # values that followed a model follow this one
            self.apply_model_defaults(self.model_defaults)
        self.rederive()
        return reload

    def _value(self, key: str) -> Any:
        if key.startswith("timeout:"):
            kind = key.split(":", 1)[1]
            return (self.timeouts.get(kind), kind in self.user_timeouts)
        return getattr(self.sampling, key) if key in SAMPLING_KEYS else getattr(self, key)

    def unprofiled(self, key: str) -> Any:
        """The value of ``key`` without the profile in use (what the settings file saves: a
        profile's values live in its config file)."""
        held = self.profile_base.get(key)
        now = self._value(key)
        return held[0] if held is not None and now == held[2] else now

    def source_of(self, key: str) -> str:
        """Where the value shown for ``key`` came from: a sampling value's provenance, else
        "profile" while the profile in use holds it ("" otherwise)."""
        held = self.profile_base.get(key)
        if held is not None and self._value(key) == held[2]:
            return PROFILE
        return self.sampling_sources.get(key, "")

    def apply_model_defaults(self, defaults: ModelSamplingDefaults) -> None:
        """A model loaded: its own sampling defaults replace the values that were still
        defaults (built-in or the previous model's); what the user set stays."""
        self.model_defaults = defaults
        values, sources = resolve({k: getattr(self.sampling, k) for k in MODEL_KEYS},
                                  self.sampling_sources, defaults)
        for k, v in values.items():
            setattr(self.sampling, k, v)
        self.sampling_sources.update(sources)

    def set_sampling_by_user(self, new: SamplingConfig) -> None:
        """Settings applied: each model-defaultable value that changed becomes the user's
        (saved); unchanged ones keep their source, so they still follow the model."""
        for k in MODEL_KEYS:
            if getattr(new, k) != getattr(self.sampling, k):
                self.sampling_sources[k] = SAVED
        self.sampling = new

    def sampling_provenance(self) -> str:
        """'temperature 0.2 (model card) · top-p 0.9 (model card) · top-k 0 (built-in) · …'."""
        from engine.bounds import bound_of

        return " · ".join(f"{bound_of(SamplingConfig, k).name_for(k)} "
                          f"{getattr(self.sampling, k):g} ({self.sampling_sources.get(k, BUILT_IN)})"
                          for k in MODEL_KEYS)

    @property
    def timeouts_user_set(self) -> bool:
        """Any timeout typed by the user. Setting False hands every kind back to the derivation."""
        return bool(self.user_timeouts)

    @timeouts_user_set.setter
    def timeouts_user_set(self, value: bool) -> None:
        if value:
            self.user_timeouts.update(TIMEOUT_KINDS)
        else:
            self.user_timeouts.clear()

    def timeout_details(self) -> dict[str, TimeoutDerivation]:
        return derive_timeout_details(self.measured_tok_s, self.sampling.max_new_tokens,
                                      self.bench_grid)

    def set_bench_grid(self, grid: Optional[BenchGrid]) -> bool:
        """The dashboard's grid changed: re-derive the bench timeout (unless the user set it).
        True when the grid differs from the one recorded."""
        if grid == self.bench_grid:
            return False
        self.bench_grid = grid
        self.rederive()
        return True

    def rederive(self) -> None:
        """Recompute the derived timeouts (speed or max_new_tokens changed); the user's stay.
        Updates the dict in place: the runner holds the same object."""
        for kind, d in self.timeout_details().items():
            if kind not in self.user_timeouts:
                self.timeouts[kind] = d.seconds

    def set_user_timeout(self, kind: str, seconds: Optional[float]) -> None:
        """A timeout the user typed (None = no limit): kept until re-derived."""
        self.timeouts[kind] = seconds
        self.user_timeouts.add(kind)

    def apply_speed(self, tok_s: Optional[float], source: str = "speed probe") -> None:
        """Record a speed measurement (starts the running sample); re-derive the timeouts the
        user did not set."""
        self.measured_tok_s = tok_s
        self.speed_source = source if tok_s else ""
        self.speed_samples = [float(tok_s)] if tok_s else []
        self.rederive()

    SPEED_SAMPLES = 9

    def record_run_speed(self, tok_s: float) -> float:
        """A finished run's decode speed joins the sample (the newest ``SPEED_SAMPLES``); the
        timeouts are re-derived from the median. Returns the median."""
        if not self.speed_samples:
            self.apply_speed(tok_s, source="first answer")
            return float(tok_s)
        self.speed_samples = (self.speed_samples + [float(tok_s)])[-self.SPEED_SAMPLES:]
        med = float(statistics.median(self.speed_samples))
        self.measured_tok_s = med
        self.speed_source = f"median of {len(self.speed_samples)} runs"
        self.rederive()
        return med
