"""The app's model state: loading (and reloading) the model in the background, the start-up
speed probe and vocabulary, the running speed figure the timeouts follow, and the messages of
those background jobs (shown on whichever screen is open). A mixin of ``TokenforgeApp``.

A reload loads the new model first: the old one stays in ``app.lm`` (and in use) until the new
one has loaded, and a failure keeps it, with the reason shown. The speed probe starts only when
the start-up work (the vocabulary) has ended, so it measures the machine, not the contention.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from app.inert import notice, plain
from app.messages import (JobCancelled, JobFailed, JobFinished, JobProgressed, JobStarted, JobStuck,
                          ModelChanged, SettingsChanged)
from app.widgets.phase_progress import PhaseProgress

if TYPE_CHECKING:
    from engine.lm.model import LoadedModel


class ModelLifecycle:
    """Model, probe and vocabulary jobs of the app (needs ``runner``, ``engine``, ``settings``)."""

    # -- model --------------------------------------------------------------------------------
    def load_model(self) -> None:
        """(Re)load the model named in settings in the background; chat waits for it."""
        s = self.settings
        for j in self.runner.running():
            if j.kind in ("chat", "speed", "advtok", "tree", "bench", "load"):
                j.cancel("user")
        self.model_state = "loading"  # the old model (if any) stays in self.lm until the new works
        self.model_error = ""
        self.sub_title = plain(f"loading {s.model}…" + (f" (keeping {self.lm.describe()} until it "
                                                        "works)" if self.lm is not None else ""))
        job = self.runner.start("load", self.engine.load_model, s.model, device=s.device,
                                dtype=s.dtype, trust_remote_code=s.trust_remote_code,
                                engine_path=s.engine_path, params={"model": s.model})
        self._bg_jobs[job.id] = "load"
        self.notify_screens(ModelChanged)

    def _after_load(self, lm: "LoadedModel") -> None:
        if self.settings.context_size:  # a profile's context size: never above the model's
            lm.context_length = min(int(lm.context_length), int(self.settings.context_size))
        self.lm = lm
        # the model's own sampling defaults replace the values still at a default
        self.settings.apply_model_defaults(lm.sampling_defaults)
        self.model_state = "ready"
        self.sub_title = plain(lm.describe())
        self.notify_screens(ModelChanged)
        self.settings.speed_samples = []  # a new model: its own speed
        if self.engine.vocab_available():
            self.vocab_state = "loading"
            job = self.runner.start("vocab", self.engine.load_vocab, lm, needs_model=False)
            self._bg_jobs[job.id] = "vocab"
        else:
            self.vocab_state = "unavailable"
            self._start_probe()

    def _start_probe(self) -> None:
        """The speed probe runs once the start-up work (the vocabulary) has ended: run beside it,
        both share the CPU and the probe measured 0.6–4 tok/s instead of 11–21."""
        if self.lm is None or self.quitting or self.runner.running("speed"):
            return
        job = self.runner.start("speed", self.engine.measure_speed, self.lm, params={"tokens": 8})
        self._bg_jobs[job.id] = "speed"

    def preempt_probe(self) -> None:
        """A user job needs the model: stop the speed probe instead of making the user wait for
        it (the timeouts then come from the first long enough chat answer, see record_speed)."""
        for j in self.runner.running("speed"):
            j.cancel("preempted")

    def record_speed(self, tok_s: float, tokens: int) -> None:
        """A real answer's decode speed joins the running median the timeouts derive from (the
        first one stands alone when the probe was pre-empted). Short answers are too noisy."""
        if tokens >= 8 and tok_s > 0:
            self.settings.record_run_speed(tok_s)
            self.notify_screens(SettingsChanged)

    # -- background job messages (load, speed, vocab) -----------------------------------------
    def _bg_widgets(self, job_id: int) -> list[PhaseProgress]:
        out = []
        for s in self._listeners:
            try:
                pp = s.query_one("#progress", PhaseProgress)
            except Exception:
                continue
            if pp.state != "running" or pp.job_id in self._bg_jobs or pp.job_id == job_id:
                out.append(pp)
        return out

    def on_job_started(self, m: JobStarted) -> None:
        if m.job_id in self._bg_jobs:
            for pp in self._bg_widgets(m.job_id):
                pp.begin(m.kind, m.job_id)

    def on_job_progressed(self, m: JobProgressed) -> None:
        if m.job_id in self._bg_jobs:
            job = self.runner.jobs.get(m.job_id)
            for pp in self._bg_widgets(m.job_id):
                if pp.job_id != m.job_id or pp.state != "running":  # a screen opened mid-job
                    pp.begin(m.kind, m.job_id, started=job.started if job else None)
                pp.show(m.progress, m.job_id)

    def on_job_finished(self, m: JobFinished) -> None:
        kind = self._bg_jobs.pop(m.job_id, None)
        if kind is None:
            return
        msg = f"{kind} done in {m.elapsed:.1f} s"
        if kind == "load":
            self._after_load(m.result)
            msg = f"loaded {m.result.describe()} in {m.elapsed:.1f} s"
        elif kind == "speed":
            self.speed = m.result
            self.settings.apply_speed(getattr(m.result, "tok_s", None))
            msg = f"measured {m.result.tok_s:.1f} tok/s; timeouts derived from it"
            self.notify_screens(SettingsChanged)
        elif kind == "vocab":
            self.vocab = m.result
            self.vocab_state = "ready"
            self.notify_screens(ModelChanged)
        self._end_bg(m.job_id, "finished", msg)
        if kind == "vocab":
            self._start_probe()

    def on_job_cancelled(self, m: JobCancelled) -> None:
        kind = self._bg_jobs.pop(m.job_id, None)
        if kind is None:
            return
        if kind == "load":
            self.model_state = "failed" if self.lm is None else "ready"
            self.model_error = f"loading cancelled ({m.reason})"
            self.sub_title = plain(self.lm.describe()) if self.lm is not None else "no model"
            self.notify_screens(ModelChanged)
        elif kind == "vocab":
            self.vocab_state = "none"
        self._end_bg(m.job_id, "cancelled", f"{kind} cancelled ({m.reason})")
        if kind == "vocab" and m.reason != "shutdown":
            self._start_probe()

    def on_job_failed(self, m: JobFailed) -> None:
        """Every failure (any screen's job bubbles here): one toast; the app stays usable."""
        text = m.message + (f"\nhint: {m.hint}" if m.hint else "")
        notice(self, text, title=f"{m.kind} failed", severity="error", timeout=8)
        kind = self._bg_jobs.pop(m.job_id, None)
        if kind == "load":
            self.model_error = m.message
            if self.lm is not None:  # a failed reload keeps the working model
                self.model_state = "ready"
                self.sub_title = plain(self.lm.describe())
                notice(self, f"Kept {self.lm.describe()}: the new model did not load ({m.message})",
                       title="model reload failed", severity="warning", timeout=10)
            else:
                self.model_state = "failed"
                self.sub_title = "no model — F6 settings to choose one"
            self.notify_screens(ModelChanged)
        elif kind == "vocab":
            self.vocab_state = "failed"
        if kind is not None:
            self._end_bg(m.job_id, "failed", m.message)
        if kind == "vocab":
            self._start_probe()

    def on_job_stuck(self, m: JobStuck) -> None:
        self.notify(f"The {m.kind} job did not stop within {m.seconds:.0f} s (stuck inside one "
                    "model call). Press Ctrl+C twice to force quit.", title="job stuck",
                    severity="error", timeout=15)

    def _end_bg(self, job_id: int, state: str, msg: str) -> None:
        for pp in self._bg_widgets(job_id):
            if pp.job_id == job_id:
                pp.end(state, msg, job_id)
