"""Where a dataset run (or a judging pass over a results file) is, for any front end: the row in
progress and its phase (diagram, search iteration i/N, sampling token j/M, judging), rows per
hour and an ETA as h:mm:ss. It is a consumer of the engine's Progress events — the run reports
``row`` / ``row-done`` around each row, the search, sampler and judges report inside it — so the
CLI line and the TUI read the same state. UI-free: no printing here."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from engine.progress import Progress

#: engine phase -> the word shown
PHASE_WORDS = {"vocab": "vocabulary", "mdd": "diagram", "search": "search",
               "generate": "sampling", "judge": "judging", "load": "loading"}


def hms(seconds: Optional[float]) -> str:
    """``1:02:03``; ``—`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "—"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class RunProgress:
    """State of a run over ``rows`` rows (this process's share). Feed it every Progress event
    with :meth:`update`; read :meth:`line`, :meth:`rows_per_hour` and :meth:`eta`."""

    rows: int
    done: int = 0
    current: int = 0                 # 1-based index of the row in progress; 0 = between rows
    row_id: str = ""
    phase: str = ""                  # a word of PHASE_WORDS
    detail: str = ""                 # "iteration 3/50", "adversarial token 12/64", …
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=-1.0)
    last_done: float = field(default=-1.0)   # when the last row finished
    _key: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.clock()

    # ------------------------------------------------------------------ events
    def update(self, p: Progress) -> bool:
        """Take one event; True when it starts a new step worth a line of its own in a log
        (a new row, phase, search iteration, sampling side or judge), False for ticks inside."""
        m = p.metrics
        if p.phase == "row":
            self.current, self.row_id = p.step, str(m.get("row_id", ""))
            self.phase, self.detail = "starting", ""
        elif p.phase == "row-done":
            self.done += 1
            self.last_done = self.clock()
            self.current, self.phase, self.detail = 0, "", ""
        elif p.phase == "search":
            self.phase = "search"
            it = m.get("iteration")
            if it is None:               # the start and the final pair, outside the iterations
                self.detail = "scoring"
            else:
                self.detail = f"iteration {it}/{m.get('iterations', p.total)}"
            if "scored" in p.message and p.total:
                self.detail += f" · scored {p.step}/{p.total}"
            return self._changed(("search", it))
        elif p.phase == "mdd":
            self.phase = "diagram"
            self.detail = "built" if p.total and p.step >= p.total else (
                f"byte {p.step}/{p.total}" if p.total else "")
            return self._changed(("diagram",))
        elif p.phase == "generate":
            side = m.get("side", "")
            self.phase = "sampling"
            self.detail = (f"{side} " if side else "") + f"token {p.step}/{p.total}"
            return self._changed(("sampling", side))
        elif p.phase == "judge":
            self.phase = "judging"
            self.detail = p.message
            return self._changed(("judge", p.message))
        else:
            self.phase = PHASE_WORDS.get(p.phase, p.phase)
            self.detail = p.message
            return self._changed((p.phase,))
        return self._changed((p.phase, self.current, self.done))

    def _changed(self, key: tuple[Any, ...]) -> bool:
        key = (self.current,) + key
        if key == self._key:
            return False
        self._key = key
        return True

    # ------------------------------------------------------------------ figures
    def elapsed(self) -> float:
        return max(0.0, self.clock() - self.started)

    def rows_per_hour(self) -> Optional[float]:
        """Finished rows per hour, over the time up to the last one finished."""
        span = self.last_done - self.started
        return self.done / span * 3600 if self.done and span > 0 else None

    def eta(self) -> Optional[float]:
        """Seconds to the last row: the rows left at the mean time per finished row, less the
        time the current row has already taken (unknown before a row has finished)."""
        rate = self.rows_per_hour()
        if not rate:
            return None
        left = (self.rows - self.done) * 3600 / rate - (self.clock() - self.last_done)
        return max(0.0, left) if self.done < self.rows else 0.0

    def rate_text(self) -> str:
        r = self.rows_per_hour()
        return "— rows/h" if r is None else (f"{r:.1f} rows/h" if r < 10 else f"{r:.0f} rows/h")

    def line(self, prefix: str = "") -> str:
        """``row 3/20 (id) · search iteration 4/50 · 12 rows/h · ETA 0:41:10 · 0:03:12``."""
        where = (f"row {self.current}/{self.rows}" + (f" ({self.row_id})" if self.row_id else "")
                 if self.current else f"{self.done}/{self.rows} rows done" if self.rows else "")
        what = " ".join(x for x in (self.phase, self.detail) if x)
        parts = [x for x in (where, what) if x]
        return (prefix + " · ".join(parts + [self.rate_text(), f"ETA {hms(self.eta())}",
                                             f"elapsed {hms(self.elapsed())}"]))
