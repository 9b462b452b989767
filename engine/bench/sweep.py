"""A compression sweep: one method run at several values of its ratio parameter, beside the
baseline, in the same interleaved bench run (``tokenforge bench --sweep evict-cake.budget=64,128``).

Each value is an ordinary method instance with its parameters, so every run is a normal record
and ``bench report`` of any runs file finds the curves by itself (rows of one method that differ
in its ratio parameter, ``plot_data.sweep_curves``). The values are checked against the bound the
method declares for that parameter (``methods/params.py: RATIO_PARAMS``) before a model is loaded.
Torch-free."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.errors import InputError

#: values in one sweep (each is a whole method's share of the grid: time is the real cost, and
#: the grid's memory is bounded separately by engine.budget.grid_bound)
MAX_VALUES = 64


@dataclass
class Sweep:
    """``method`` run at each of ``values`` of its ratio parameter ``key``."""

    method: str
    key: str
    values: list = field(default_factory=list)

    @property
    def spec(self) -> str:
        return f"{self.method}.{self.key}=" + ",".join(str(v) for v in self.values)


def _sweepable() -> str:
    from engine.bench.methods.params import RATIO_PARAMS

    return ", ".join(f"{m}.{p.key}" for m, p in RATIO_PARAMS.items())


def parse_sweep(spec: str) -> Sweep:
    """'evict-cake.budget=64,128,256' (``METHOD.KEY``, as ``--param`` names it, or
    ``METHOD:KEY``) → a checked ``Sweep``; anything wrong is one InputError."""
    if not isinstance(spec, str) or "=" not in spec:
        raise InputError(f"--sweep {spec!r}: expected METHOD.KEY=V1,V2,…",
                         f"e.g. evict-cake.budget=64,128,256; sweepable: {_sweepable()}")
    lhs, rhs = spec.split("=", 1)
    lhs = lhs.strip()
    cut = min((i for i in (lhs.find(":"), lhs.find(".")) if i > 0), default=-1)
    if cut < 0:
        raise InputError(f"--sweep {spec!r}: expected METHOD.KEY=V1,V2,…", f"sweepable: {_sweepable()}")
    return sweep_of(lhs[:cut].strip(), lhs[cut + 1:].strip(), rhs)


def sweep_of(method: str, key: str, values: str, *, flag: str = "--sweep") -> Sweep:
    """``method``'s ratio parameter ``key`` at the comma-separated ``values`` → a checked
    ``Sweep`` (the command line's ``--sweep`` and the TUI's sweep fields; ``flag`` names the
    field in the messages)."""
    lhs = f"{method}.{key}"
    raw = [v.strip() for v in values.split(",")]
    if not any(raw):
        raise InputError(f"{flag} {lhs}: no values given", "e.g. evict-cake.budget=64,128,256")
    if "" in raw:
        raise InputError(f"{flag} {lhs}: an empty value in {values.strip()!r}")
    if len(raw) > MAX_VALUES:
        raise InputError(f"{flag} {lhs}: {len(raw)} values, at most {MAX_VALUES}")
    from engine.bounded_json import BadJSON, loads

    parsed: list[Any] = []
    for v in raw:
        try:
            parsed.append(loads(v, f"{flag} {lhs}"))
        except BadJSON:
            raise InputError(f"{flag} {lhs}: {v!r} is not a number") from None
    sw = Sweep(method, key, parsed)
    check_sweep(sw, flag=flag)
    return sw


def check_sweep(sw: Sweep, *, flag: str = "--sweep") -> None:
    """The method has a ratio parameter, ``key`` is it, every value is inside its declared bound
    and no value repeats."""
    from engine.bench.methods import method_names
    from engine.bench.methods.params import RATIO_PARAMS

    if sw.method not in method_names():
        raise InputError(f"{flag}: unknown method {sw.method!r}", f"sweepable: {_sweepable()}")
    rp = RATIO_PARAMS.get(sw.method)
    if rp is None:
        raise InputError(f"{flag}: {sw.method} has no ratio parameter to sweep",
                         f"sweepable: {_sweepable()}")
    if sw.key != rp.key:
        raise InputError(f"{flag}: {sw.method} sweeps {rp.key} ({rp.meaning}), not {sw.key!r}")
    if not sw.values:
        raise InputError(f"{flag} {sw.method}.{sw.key}: no values given")
    for v in sw.values:
        rp.bound.check(f"{flag} {sw.method}.{sw.key}", v)
    seen: set = set()
    for v in sw.values:
        if v in seen:
            raise InputError(f"{flag} {sw.method}.{sw.key}: value {v} given twice")
        seen.add(v)


def check_sweeps(sweeps: list[Sweep], methods: list[str], params: dict) -> None:
    """Sweeps against the rest of the bench config: each method swept once, not also among
    ``--methods`` (the sweep runs it at each value), its ratio parameter not also in ``--param``."""
    names: set[str] = set()
    for sw in sweeps:
        if not isinstance(sw, Sweep):
            raise InputError(f"sweep {sw!r} is not a Sweep")
        check_sweep(sw)
        if sw.method in names:
            raise InputError(f"--sweep: {sw.method} is swept twice; give all its values in one --sweep")
        names.add(sw.method)
        if sw.method in methods:
            raise InputError(f"--sweep: {sw.method} is also among --methods; the sweep already runs "
                             f"it at each value (add its default to the values if wanted)")
        if sw.key in params.get(sw.method, {}):
            raise InputError(f"--param {sw.method}.{sw.key} and --sweep {sw.method}.{sw.key} "
                             "both set it; keep one")


def sweep_params(sw: Sweep, params: dict) -> list[dict]:
    """The parameters of each swept instance: the method's ``--param`` overrides plus the value."""
    base = dict(params.get(sw.method, {}))
    return [{**base, sw.key: v} for v in sw.values]


__all__ = ["MAX_VALUES", "Sweep", "check_sweep", "check_sweeps", "parse_sweep", "sweep_of",
           "sweep_params"]
