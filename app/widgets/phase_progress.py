"""Phase progress: what the engine is doing now, embedded by every screen.

One line names the job and phase (load, vocab, mdd, search, tree, generate, bench, calibrate) and its
message; a bar with step/total, elapsed, ETA and a rate in the phase's own unit; a line with the
phase's own figures (best score + a sparkline of it for search; tree size, depth and best reward
for tree search; TTFT for generation). Fed by ``JobProgressed`` messages (already throttled by
the runner to ≤ 20 Hz), so every update is cheap.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Optional

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widget import Widget
from textual.widgets import ProgressBar, Sparkline, Static

from engine.progress import PHASES, Progress

RATE_UNITS = {"load": "steps/s", "vocab": "tokens/s", "mdd": "edges/s",
              "search": "candidates/s", "tree": "rollouts/s", "prefill": "tokens/s",
              "generate": "tok/s",
              "bench": "runs/s", "calibrate": "tokens/s"}
#: metric keys an engine may send with a rate it measured itself (preferred over our estimate)
RATE_KEYS = ("tok_s", "candidates_s", "cands_s", "cand_s", "rollouts_s", "rate")
#: per phase, only the keys whose unit is that phase's unit (AdvTok's search also sends tok_s,
#: tree search sends tok_s: neither is a rate in candidates/s or rollouts/s)
PHASE_RATE_KEYS = {"search": ("cand_s", "candidates_s", "cands_s"), "tree": ("rollouts_s",),
                   "prefill": ("tok_s",), "generate": ("tok_s",)}
BEST_KEYS = ("best_score", "best", "score")
HIDE_KEYS = set(RATE_KEYS) | {"elapsed", "eta_s", "chunk", "iteration", "iterations",
                               "done_fraction"}
STATE_STYLE = {"idle": "dim", "running": "bold cyan", "finished": "green",
               "cancelled": "yellow", "failed": "bold red", "stuck": "bold red"}
HINT = "Esc to stop · Ctrl+C twice to force quit"


def fmt_seconds(s: Optional[float]) -> str:
    if s is None or s != s or s < 0:
        return "–"
    if s < 10:
        return f"{s:.1f} s"
    if s < 3600:
        m, sec = divmod(int(round(s)), 60)
        return f"{m}:{sec:02d}" if m else f"{sec} s"
    h, rest = divmod(int(s), 3600)
    return f"{h}:{rest // 60:02d} h"


def fmt_value(v: Any) -> str:
    if v is None:  # not known yet (e.g. no rollout finished): never the word "None"
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)[:40]


class PhaseProgress(Widget):
    """Current phase with bar, step/total, elapsed, ETA, rate and phase figures."""

    DEFAULT_CSS = """
    PhaseProgress { height: auto; padding: 0 1; border-top: solid $primary-background; }
    PhaseProgress > #pp-title { height: 1; }
    PhaseProgress > Horizontal { height: 1; }
    PhaseProgress #pp-bar { width: auto; }
    PhaseProgress #pp-bar Bar { width: 30; }
    PhaseProgress #pp-stats { width: 1fr; margin-left: 1; }
    PhaseProgress #pp-figures { width: 1fr; height: 1; }
    PhaseProgress #pp-spark { width: 24; height: 1; display: none; }
    PhaseProgress.-search #pp-spark { display: block; }
    """

    def __init__(self, *, name: Optional[str] = None, id: Optional[str] = None,
                 classes: Optional[str] = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.state = "idle"
        self.kind = ""
        self.job_id: Optional[int] = None
        self.progress: Optional[Progress] = None
        self.started = 0.0
        self.phase_started = 0.0
        self.finished_at: Optional[float] = None
        self.end_message = ""
        self.best_history: deque[float] = deque(maxlen=120)
        self.updates = 0
        self.run_started: Optional[float] = None  # first report of a multi-iteration run
        self.iteration: Optional[int] = None      # the iteration now running (attack search)
        self.iteration_started = 0.0
        self.iteration_seconds: list[float] = []  # each finished iteration's duration
        #: seconds the phases after the iterations will take (set by the screen that knows them,
        #: e.g. the attack's sampling at the measured speed); part of the run ETA
        self.after_s: Optional[float] = None

    def compose(self) -> ComposeResult:
        yield Static("idle", id="pp-title")
        with Horizontal():
            yield ProgressBar(total=None, show_eta=False, show_percentage=True, id="pp-bar")
            yield Static("", id="pp-stats")
        with Horizontal(id="pp-figrow"):
            yield Static("", id="pp-figures")
            yield Sparkline([], id="pp-spark")

    def on_mount(self) -> None:
        self.set_interval(0.5, self._tick)
        self._render_all()

    # -- feeding ------------------------------------------------------------------------------
    def begin(self, kind: str, job_id: Optional[int] = None, message: str = "",
              started: Optional[float] = None) -> None:
        """A job started (at ``started``, monotonic; default now): clear the previous figures."""
        now = started if started is not None else time.monotonic()
        self.state, self.kind, self.job_id = "running", kind, job_id
        self.started = self.phase_started = now
        self.finished_at = None
        self.progress = None
        self.end_message = message
        self.best_history.clear()
        self.run_started = None
        self.iteration = None
        self.iteration_seconds = []
        self.after_s = None
        self._render_all()

    def show(self, p: Progress, job_id: Optional[int] = None) -> None:
        """A progress report for the running job (a phase change restarts the phase clock)."""
        if job_id is not None and self.job_id is not None and job_id != self.job_id:
            return  # a stale job's report
        if self.state != "running":
            self.begin(self.kind or p.phase, job_id)
        if self.progress is None or p.phase != self.progress.phase:
            self.phase_started = time.monotonic()
            self.best_history.clear()
        best = self._metric(p, BEST_KEYS)
        if isinstance(best, (int, float)) and not isinstance(best, bool):
            self.best_history.append(float(best))
        now = time.monotonic()
        if self.run_started is None and "iterations" in p.metrics:
            self.run_started = now
        it = p.metrics.get("iteration")
        if isinstance(it, int) and it != self.iteration:
            if self.iteration is not None:
                self.iteration_seconds.append(now - self.iteration_started)
            self.iteration, self.iteration_started = it, now
        self.progress = p
        self.updates += 1
        self._render_all()

    def end(self, state: str, message: str = "", job_id: Optional[int] = None) -> None:
        """The job ended: finished, cancelled, failed or stuck (stuck keeps the clock running)."""
        if job_id is not None and self.job_id is not None and job_id != self.job_id:
            return
        self.state = state
        self.end_message = message
        if state != "stuck":
            self.finished_at = time.monotonic()
        self._render_all()

    def reset(self) -> None:
        self.state, self.kind, self.job_id, self.progress = "idle", "", None, None
        self.end_message = ""
        self.best_history.clear()
        self._render_all()

    # -- figures ------------------------------------------------------------------------------
    @staticmethod
    def _metric(p: Optional[Progress], keys: tuple[str, ...]) -> Any:
        if p is None:
            return None
        for k in keys:
            if k in p.metrics:
                return p.metrics[k]
        return None

    def elapsed(self) -> float:
        if not self.started:
            return 0.0
        return (self.finished_at or time.monotonic()) - self.started

    def rate(self) -> Optional[float]:
        """The engine's own rate if it sent one, else steps per second in this phase."""
        p = self.progress
        if p is None:
            return None
        own = self._metric(p, PHASE_RATE_KEYS.get(p.phase, RATE_KEYS))
        if isinstance(own, (int, float)) and not isinstance(own, bool):
            return float(own)
        dt = (self.finished_at or time.monotonic()) - self.phase_started
        if p.step > 0 and dt > 0:
            return p.step / dt
        return None

    def fraction(self) -> Optional[float]:
        """How much of this phase is done: the engine's own finer figure when it sends one
        (tree search inside a round: decoded tokens of the round's rollouts), else step/total."""
        p = self.progress
        if p is None:
            return None
        own = p.metrics.get("done_fraction")
        if isinstance(own, (int, float)) and not isinstance(own, bool):
            return max(0.0, min(1.0, float(own)))
        return p.fraction

    def eta(self) -> Optional[float]:
        """This phase's (or, in an iterated run, this iteration's) remaining seconds."""
        p = self.progress
        if p is None or not p.total or self.state != "running":
            return None
        own = p.metrics.get("eta_s")  # the engine's own estimate (prefill sends one)
        if isinstance(own, (int, float)) and not isinstance(own, bool):
            return max(0.0, float(own))
        f = self.fraction()
        if not f:
            return None
        since = self.iteration_started if self.iteration is not None else self.phase_started
        dt = time.monotonic() - since
        if dt <= 0:
            return None
        return max(0.0, dt * (1 - f) / f)

    def overall(self) -> Optional[tuple[int, int, Optional[float]]]:
        """(iteration, iterations, ETA of the whole run) when the engine reports iterations: the
        bar is one iteration's work; the run's ETA is the rest of this iteration, plus the
        iterations still to come at the mean finished iteration's time (the current one's
        projection before any finished), plus the phases after the iterations (``after_s``).
        So it is never below the iteration's own ETA, whatever ran before the first iteration."""
        p = self.progress
        m = p.metrics if p is not None else {}
        it, n = m.get("iteration"), m.get("iterations")
        if not isinstance(it, int) or not isinstance(n, int) or n <= 0:
            return None
        eta = None
        here = self.eta()
        if self.state == "running" and here is not None:
            if self.iteration_seconds:
                per = sum(self.iteration_seconds) / len(self.iteration_seconds)
            else:
                per = time.monotonic() - self.iteration_started + here
            eta = here + max(n - it, 0) * per + (self.after_s or 0.0)
        return it, n, eta

    def overall_text(self) -> str:
        o = self.overall()
        if o is None:
            return ""
        it, n, eta = o
        out = f"run: iteration {it:,}/{n:,}"
        return out + (f" · run ETA {fmt_seconds(eta)}" if self.state == "running" else "")

    def title_text(self) -> str:
        p = self.progress
        style = STATE_STYLE.get(self.state, "")
        if self.state == "idle":
            return f"[{style}]idle[/]"
        phase = p.phase if p else "starting"
        msg = (p.message if p else "") if self.state == "running" else self.end_message
        head = f"[{style}]{self.state}[/] · [b]{self.kind}[/] · phase [b]{phase}[/]"
        if msg:
            head += f" · {_escape(msg)}"
        if self.state in ("running", "stuck"):
            head += f"  [dim]{HINT}[/]"
        return head

    def stats_text(self) -> str:
        p = self.progress
        parts = []
        if p is not None:
            parts.append(f"{p.step:,}/{p.total:,}" if p.total else f"{p.step:,}")
        parts.append(f"elapsed {fmt_seconds(self.elapsed())}")
        if self.state == "running":
            parts.append(f"ETA {fmt_seconds(self.eta())}")
        r = self.rate()
        if r is not None and p is not None:
            parts.append(f"{r:,.1f} {RATE_UNITS.get(p.phase, 'steps/s')}")
        return " · ".join(parts) if self.state != "idle" else ""

    def figures_text(self) -> str:
        p = self.progress
        if p is None:
            return ""
        m = p.metrics
        if p.phase == "search":
            best = self._metric(p, BEST_KEYS)
            parts = [f"best score {fmt_value(best)}" if best is not None else "best score –"]
            parts = ([self.overall_text()] if self.overall() else []) + parts
            parts += [f"{k} {fmt_value(v)}" for k, v in m.items()
                      if k not in HIDE_KEYS and k not in BEST_KEYS][:4]
        elif p.phase == "tree":
            size = m.get("tree_size", m.get("nodes"))
            parts = [f"tree size {fmt_value(size) if size is not None else '–'}",
                     f"depth {fmt_value(m['depth']) if 'depth' in m else '–'}",
                     f"best reward {fmt_value(m['best_reward']) if 'best_reward' in m else '–'}"]
            parts += [f"{k} {fmt_value(v)}" for k, v in m.items() if k not in HIDE_KEYS and k not in
                      ("tree_size", "nodes", "depth", "best_reward")][:3]
        else:
            parts = [f"{k} {fmt_value(v)}" for k, v in m.items() if k not in HIDE_KEYS][:6]
        return _escape(" · ".join(parts))

    # -- drawing ------------------------------------------------------------------------------
    def _tick(self) -> None:
        if self.state in ("running", "stuck"):
            self._render_all()

    def _render_all(self) -> None:
        if not self.children:  # not composed yet (is_mounted is False inside on_mount)
            return
        p = self.progress
        self.query_one("#pp-title", Static).update(self.title_text())
        self.query_one("#pp-stats", Static).update(self.stats_text())
        figures = self.figures_text()
        self.query_one("#pp-figures", Static).update(figures)
        self.set_class(not figures, "-no-figures")  # a short screen drops the empty row
        bar = self.query_one("#pp-bar", ProgressBar)
        if self.state == "finished":
            bar.update(total=1, progress=1)  # an early stop (eos) still completed the job
        elif p is not None and p.total:
            f = self.fraction() or 0.0
            bar.update(total=p.total, progress=min(f * p.total, p.total))
        elif self.state == "running":
            bar.update(total=None, progress=0)  # unknown total: the indeterminate bar
        else:
            bar.update(total=1, progress=0)
        is_search = p is not None and p.phase == "search"
        self.set_class(is_search, "-search")
        if is_search:
            self.query_one("#pp-spark", Sparkline).data = list(self.best_history)


def _escape(text: str) -> str:
    from app.inert import tesc

    return tesc(text)


__all__ = ["PhaseProgress", "PHASES", "RATE_UNITS", "fmt_seconds"]
