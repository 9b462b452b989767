"""The dashboard form read as one checked grid: methods (ticked and combinations), an optional
compression sweep (the parser and ``BenchConfig.sweeps`` of ``bench --sweep``), suite, query
kinds, repeats, max new tokens and runs file → the ``BenchConfig`` fields, the runs file and the
grid size the bench timeout is derived from; or the first problem, shown inline. A mixin of
``DashboardScreen`` (it needs ``tokenforge_app``, ``loaded_model`` and ``query_one``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from textual.widgets import Input, Select, SelectionList

from engine.bench.config import BenchConfig
from engine.budget import grid_bound
from engine.errors import InputError

from app.engines import module_available
from app.screens.dashboard_form import (parse_combinations, parse_runs_path, parse_sweep_fields,
                                        suite_counts)
from app.settings import BenchGrid
from app.validate import first_error, parse_field

ENGINE_MODULES = ("engine.bench.harness",)


class GridForm:
    """The form's fields → (cfg, out, grid) or the first error."""

    # ---- validation -------------------------------------------------------------------------
    @staticmethod
    def _parse_repeats(text: str) -> int:
        return parse_field(text, BenchConfig, "repeats")

    def _parse_mnt(self, text: str) -> int:
        try:
            lm = self.loaded_model
        except Exception:  # noqa: BLE001 — validated before the screen is attached
            lm = None
        ctx = int(getattr(lm, "context_length", 0) or 0)
        return parse_field(text, BenchConfig, "max_new_tokens", hi=ctx - 1 if ctx > 1 else None)

    def form(self) -> tuple[dict[str, Any], Optional[str]]:
        """({cfg: BenchConfig fields, out, grid: BenchGrid}, first error or None)."""

        def methods() -> list[str]:
            chosen = list(self.query_one("#dash-methods", SelectionList).selected)
            chosen += [c for c in parse_combinations(self.query_one("#dash-combos", Input).value)
                       if c not in chosen]
            if not chosen:
                raise InputError("methods: choose at least one")
            return chosen

        def kinds() -> list[str]:
            chosen = list(self.query_one("#dash-kinds", SelectionList).selected)
            if not chosen:
                raise InputError("query kinds: choose at least one")
            return chosen

        def suite() -> str:
            sel = self.query_one("#dash-suite", Select)  # Textual 8: no choice is Select.NULL
            if sel.is_blank() or not sel.value:
                raise InputError("suite: none chosen (no suite is shipped in engine/bench/suites)")
            return str(sel.value)

        def sweep() -> Any:
            sel = self.query_one("#dash-sweep", Select)
            choice = "" if sel.is_blank() else str(sel.value)
            return parse_sweep_fields(choice, self.query_one("#dash-sweep-values", Input).value,
                                      values_so_far.get("methods", []))

        values_so_far: dict[str, Any] = {}

        def methods_kept() -> list[str]:
            values_so_far["methods"] = methods()
            return values_so_far["methods"]

        values, err = first_error({
            "methods": methods_kept, "sweep": sweep, "suite": suite, "kinds": kinds,
            "repeats": lambda: self._parse_repeats(self.query_one("#dash-repeats", Input).value),
            "max_new_tokens": lambda: self._parse_mnt(self.query_one("#dash-mnt", Input).value),
            "out": lambda: parse_runs_path(self.query_one("#dash-out", Input).value),
        })
        if err:
            return {}, err
        counts = suite_counts(values["suite"])
        queries = sum(counts.get(k, 0) for k in values["kinds"] if k != "prose")
        prose = "prose" in values["kinds"] and counts.get("prose", 0) > 0
        if queries == 0 and not prose:
            return {}, (f"suite {values['suite']} has no queries of kind "
                        f"{', '.join(values['kinds'])}: choose other kinds")
        sw = values["sweep"]
        instances = len(values["methods"]) + (len(sw.values) if sw else 0)
        try:  # the grid is scheduled in memory: the same machine bound as the command line's
            grid_bound("repeats", instances * max(1, queries)).check(values["repeats"])
        except InputError as e:
            return {}, str(e)
        cfg = {k: values[k] for k in ("methods", "suite", "repeats", "max_new_tokens", "kinds")}
        if sw is not None:  # BenchConfig.sweeps, exactly what `bench --sweep` builds
            cfg["sweeps"] = [sw]
        grid = BenchGrid(instances, queries, values["repeats"], values["max_new_tokens"], prose)
        return {"cfg": cfg, "out": str(values["out"]), "grid": grid}, None

    def engine_ready(self) -> Optional[str]:
        app = self.tokenforge_app
        if (not all(module_available(m) for m in ENGINE_MODULES)
                or not hasattr(app.engine, "bench")):
            return "the bench engine (engine.bench.harness) is not available in this checkout"
        if app.model_state == "loading":
            return "loading the model… Run opens when it is ready"
        if app.model_state == "failed" or app.lm is None:
            return f"no model: {app.model_error or 'not loaded'} — open Settings (F6)"
        return None

    def _runs_file(self) -> Optional[Path]:
        """The runs file named in the form when it is a valid path to an existing file."""
        try:
            p = parse_runs_path(self.query_one("#dash-out", Input).value)
        except InputError:
            return None
        return p if p.is_file() else None

    @staticmethod
    def _instances_problem(cfg: dict[str, Any]) -> Optional[str]:
        """Each swept instance's own checks (a budget at or below the method's window …), made
        before Run as the command line makes them before loading the model; None when fine."""
        if not cfg.get("sweeps"):
            return None
        from engine.bench.methods import make_method

        try:
            for name, params in BenchConfig(**cfg).method_specs():
                make_method(name, **params)
        except InputError as e:
            return f"sweep: {e}"
        return None
