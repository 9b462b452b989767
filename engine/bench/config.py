"""The dashboard's (``bench``) settings, torch-free, each bound declared once on its field
(engine.bounds): ``BenchConfig.validate()``, the command line (app/argcheck.py) and the TUI's
dashboard form read the same declaration. The grid's memory (``--repeats`` × the scheduled
queries, engine.budget.grid_bound) is checked against the machine; the static range is here."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from engine.bounds import BIG, SEED_MAX, bounded, check


@dataclass
class BenchConfig:
    methods: list[str]
    suite: str = "core-v1"
    # every repeat re-runs each (method, query): the cost is time (the bench timeout and the
    # grid's memory, engine.budget.grid_bound, bound it), not a fixed number
    repeats: int = bounded(5, lo=1, hi=BIG)
    # tokens decoded and timed per run; the baseline's continuation of this length is kept per
    # query for the quality passes, and the grid's time grows linearly with it: 4,096 (a long
    # answer) is the ceiling, the model's context is checked when the suite is run
    max_new_tokens: int = bounded(32, lo=1, hi=4096, label="max new tokens")
    seed: int = bounded(0, lo=0, hi=SEED_MAX)
    warmup: bool = True
    # decode exactly max_new_tokens in every timed run (past EOS), so time and memory are figures
    # at one number of new tokens for every method; the answer scored is still the one ending at EOS
    fixed_length: bool = True
    kinds: Optional[list[str]] = None
    query_ids: Optional[list[str]] = None
    params: dict = field(default_factory=dict)  # method name -> params override
    # compression sweeps (engine/bench/sweep.py): each runs one method at several values of its
    # ratio parameter, beside the methods above, interleaved with them
    sweeps: list = field(default_factory=list)

    def validate(self) -> "BenchConfig":
        from engine.bench.methods import parse_methods  # torch-free registry

        from engine.bench.sweep import check_sweeps

        check(self)
        self.methods = parse_methods(",".join(self.methods))
        check_sweeps(self.sweeps, self.methods, self.params)
        return self

    def method_specs(self) -> list[tuple[str, dict]]:
        """(method name, parameters) of every instance the grid runs: the methods, then each
        sweep's values in order."""
        from engine.bench.sweep import sweep_params

        out = [(n, dict(self.params.get(n, {}))) for n in self.methods]
        for sw in self.sweeps:
            out += [(sw.method, p) for p in sweep_params(sw, self.params)]
        return out
