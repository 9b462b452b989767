"""The dispatch bridge: the ONLY place the app calls engine functions.

Why: engine calls block for seconds to minutes; keys, Ctrl+C and signal handlers need the event
loop free, and a timeout or cancel must actually stop the work (a cancelled asyncio task never
stops a thread). So every call runs in its own daemon thread with a ``CancelToken``; the loop
awaits it with wait → cancel → grace (docs/tui.md), and progress/tokens come back throttled.

Runner API (for the screens that add attack, tree search and the dashboard)
--------------------------------------------------------------------------
    job = app.runner.start(
        "advtok",                 # job kind: picks the timeout (settings) and names the thread
        fn, *args,                # called in a worker thread as fn(*args, progress=, cancel=, **kwargs)
        target=self,              # widget/screen that receives the messages (default: the app)
        params={...},             # shown in JobStarted (what was asked)
        stream=False,             # True: also passes on_token=(text, token_id) -> TokensGenerated
        needs_model=True,         # hold the model lock while fn runs (one model user at a time)
        timeout=None,             # seconds; None → runner.timeouts[kind]; 0/inf → no limit
        **kwargs)                 # more keyword args for fn
    job.cancel("user")            # sets the token; fn stops at its next check
    app.runner.cancel_all("user"); await app.runner.shutdown(grace=3.0)
    app.runner.busy               # any job not finished;  app.runner.in_flight() → threads inside fn
    await job.wait()              # the job's final state ("finished", "cancelled", "failed")
    value = await app.runner.run_aside(fn, *args)  # short UI-side work (a file read, an
                                  # aggregation) off the loop: a daemon thread, no Job, no messages

Messages (app/messages.py), posted to ``target`` and bubbling to the app, in this order:
JobStarted → JobProgressed* / TokensGenerated* → one of JobFinished | JobCancelled | JobFailed
(JobStuck may come before the last one). Handle them as ``on_job_finished(self, m)`` etc. and
compare ``m.job_id`` with the job you started (drop stale ones). The app already turns JobFailed
into a toast and JobStuck into a warning; a screen shows the inline message and goes idle. Put
the engine import INSIDE ``fn`` (or a helper in app/engines.py) so the TUI never imports torch at
startup. Engine functions must report ``progress`` and check ``cancel`` every ~100 ms.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
import traceback
from typing import Any, Callable, Optional

from engine.errors import EngineError, InputError
from engine.progress import Cancelled, CancelToken, Progress

from app.job import Job  # noqa: F401  (re-exported: screens and tests import it from here)
from app.messages import (JobCancelled, JobFailed, JobFinished, JobProgressed, JobStarted,
                          JobStuck, TokensGenerated)

log = logging.getLogger("tokenforge.runner")

Post = Callable[[Any], Any]  # target.post_message (thread-safe in Textual)

#: job kinds the app knows; screens may use others (they get DEFAULT_TIMEOUT)
KINDS = ("load", "vocab", "speed", "chat", "advtok", "tree", "bench")
DEFAULT_TIMEOUT = 600.0


class ProgressPump:
    """The engine's ``progress`` callback, run in the worker thread. Posts at most every
    ``every`` seconds; a phase change and a final step go at once; a throttled report is sent by
    a timer once ``every`` has passed even when the engine reports nothing more (a step that
    then works for a minute without reporting must still show its own message, not the one
    before it); ``flush`` sends the newest pending report (called from the job's ``finally``,
    so the last state is never lost) and stops the timer."""

    def __init__(self, post: Post, job_id: int, kind: str, every: float = 0.05) -> None:
        self.post, self.job_id, self.kind, self.every = post, job_id, kind, every
        self.sent_at = 0.0
        self.phase: Optional[str] = None
        self.pending: Optional[Progress] = None
        self.sent = 0
        self.seen = 0
        self._lock = threading.Lock()
        self._timer: Optional[threading.Timer] = None
        self._closed = False

    def __call__(self, p: Progress) -> None:
        with self._lock:
            self.seen += 1
            now = time.monotonic()
            final = p.total is not None and p.step >= p.total
            if final or p.phase != self.phase or now - self.sent_at >= self.every:
                self._send(p)
                self.sent_at, self.phase = now, p.phase
                return
            self.pending = p  # newest wins
            if self._timer is None and not self._closed:
                t = threading.Timer(max(0.0, self.every - (now - self.sent_at)), self._late)
                t.daemon = True
                self._timer = t
                t.start()

    def _late(self) -> None:
        with self._lock:
            self._timer = None
            if self.pending is not None and not self._closed:
                self.sent_at = time.monotonic()
                self._send(self.pending)

    def _send(self, p: Progress) -> None:
        self.pending = None
        self.sent += 1
        self.post(JobProgressed(self.job_id, self.kind, p))

    def flush(self) -> None:
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self.pending is not None:
                self._send(self.pending)


class TokenPump:
    """The engine's ``on_token(text, token_id)`` callback: buffers text and posts a
    ``TokensGenerated`` every ``every`` seconds; ``flush`` sends the tail."""

    def __init__(self, post: Post, job_id: int, kind: str, every: float = 0.05) -> None:
        self.post, self.job_id, self.kind, self.every = post, job_id, kind, every
        self.buf: list[str] = []
        self.ids: list[int] = []
        self.n_total = 0
        self.sent_at = 0.0
        self.sent = 0

    def __call__(self, text: str, token_id: int) -> None:
        self.buf.append(text)
        if token_id >= 0:
            self.ids.append(token_id)
            self.n_total += 1
        now = time.monotonic()
        if now - self.sent_at >= self.every:
            self.flush()
            self.sent_at = now

    def flush(self) -> None:
        if self.buf or self.ids:
            text, ids = "".join(self.buf), self.ids
            self.buf, self.ids = [], []
            self.sent += 1
            self.post(TokensGenerated(self.job_id, self.kind, text, ids, self.n_total))


class Runner:
    """Starts engine jobs in daemon threads and tracks them (see the module docstring)."""

    def __init__(self, post: Post, timeouts: Optional[dict[str, Optional[float]]] = None,
                 grace: float = 2.0, every: float = 0.05) -> None:
        self.post = post
        self.timeouts: dict[str, Optional[float]] = dict(timeouts or {})
        self.grace = grace
        self.every = every
        self.model_lock = threading.Lock()
        self.jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._count_lock = threading.Lock()
        self._in_flight = 0

    # -- state ------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return any(not j.done for j in self.jobs.values())

    def running(self, kind: Optional[str] = None) -> list[Job]:
        return [j for j in self.jobs.values() if not j.done and (kind is None or j.kind == kind)]

    def in_flight(self) -> int:
        """Threads currently inside an engine function (not idle pool threads)."""
        with self._count_lock:
            return self._in_flight

    def timeout_for(self, kind: str) -> Optional[float]:
        t = self.timeouts.get(kind, DEFAULT_TIMEOUT)
        if t is None or t <= 0 or math.isinf(t):
            return None
        return float(t)

    # -- short work off the loop ---------------------------------------------------------------
    async def run_aside(self, fn: Callable[..., Any], *args: Any, name: str = "aside",
                        **kwargs: Any) -> Any:
        """Await ``fn(*args, **kwargs)`` run in a daemon thread: for short UI-side work that must
        not stall keys and Ctrl+C (re-reading a results file, aggregating it). Not a job: no
        messages, no timeout, not counted in ``busy``/``in_flight`` (a daemon thread never holds
        the exit). Its exception is raised here. Cancelling the awaiting task drops the result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

        def main() -> None:
            try:
                outcome: tuple = (True, fn(*args, **kwargs))
            except BaseException as e:  # handed to the awaiting task
                outcome = (False, e)

            def _set() -> None:
                if fut.done():
                    return
                if outcome[0]:
                    fut.set_result(outcome[1])
                else:
                    fut.set_exception(outcome[1])
            try:
                loop.call_soon_threadsafe(_set)
            except RuntimeError:  # loop closed: the app is gone
                pass

        threading.Thread(target=main, name=f"tokenforge-{name}", daemon=True).start()
        return await fut

    # -- control ----------------------------------------------------------------------------
    def start(self, kind: str, fn: Callable[..., Any], *args: Any, target: Any = None,
              params: Optional[dict[str, Any]] = None, stream: bool = False,
              needs_model: bool = True, timeout: Optional[float] = None, **kwargs: Any) -> Job:
        """Run ``fn(*args, progress=…, cancel=…, **kwargs)`` in a worker thread. Must be called
        from the event loop. Returns at once; the outcome arrives as messages."""
        loop = asyncio.get_running_loop()
        post = target.post_message if target is not None else self.post
        job = Job(id=next(self._ids), kind=kind, params=dict(params or {}), token=CancelToken(),
                  timeout=self.timeout_for(kind) if timeout is None else
                  (None if timeout <= 0 or math.isinf(timeout) else timeout))
        self.jobs[job.id] = job
        self._prune()
        job.task = loop.create_task(self._run(job, fn, args, kwargs, post, stream, needs_model),
                                    name=f"tokenforge-job-{job.id}-{kind}")
        return job

    def cancel_all(self, reason: str = "user", kind: Optional[str] = None) -> int:
        jobs = self.running(kind)
        for j in jobs:
            j.cancel(reason)
        return len(jobs)

    async def shutdown(self, grace: float = 3.0) -> bool:
        """Cancel every job and wait up to ``grace`` s for their threads. True if all ended."""
        self.cancel_all("shutdown")
        end = time.monotonic() + grace
        while time.monotonic() < end:
            if self.in_flight() == 0 and all(j.thread_done.is_set() for j in self.jobs.values()):
                return True
            await asyncio.sleep(0.02)
        return self.in_flight() == 0

    def _prune(self, keep: int = 50) -> None:
        done = [i for i, j in self.jobs.items() if j.done]
        for i in done[:-keep] if len(done) > keep else []:
            del self.jobs[i]

    # -- the call ----------------------------------------------------------------------------
    def _thread_main(self, job: Job, fn: Callable[..., Any], args: tuple, kwargs: dict,
                     post: Post, stream: bool, needs_model: bool,
                     deliver: Callable[[tuple], None]) -> None:
        pump = ProgressPump(post, job.id, job.kind, self.every)
        tokens = TokenPump(post, job.id, job.kind, self.every) if stream else None
        outcome: tuple
        with self._count_lock:
            self._in_flight += 1
        try:
            locked = False
            if needs_model:
                if not self.model_lock.acquire(blocking=False):
                    pump(Progress("load", 0, None, "waiting for the model (another job is using it)"))
                    while not self.model_lock.acquire(timeout=0.05):
                        job.token.check()  # waiting for the model must stay cancellable
                locked = True
            try:
                job.token.check()
                kw = dict(kwargs, progress=pump, cancel=job.token)
                if tokens is not None:
                    kw["on_token"] = tokens
                outcome = ("ok", fn(*args, **kw))
            finally:
                if locked:
                    self.model_lock.release()
        except Cancelled as e:
            outcome = ("cancelled", e)
        except BaseException as e:  # handed to the loop; never lost in a thread
            outcome = ("error", e, traceback.format_exc())
        finally:
            try:
                pump.flush()
                if tokens is not None:
                    tokens.flush()
            finally:
                with self._count_lock:
                    self._in_flight -= 1
                job.thread_done.set()
        deliver(outcome)

    async def _run(self, job: Job, fn: Callable[..., Any], args: tuple, kwargs: dict, post: Post,
                   stream: bool, needs_model: bool) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

        def deliver(outcome: tuple) -> None:
            def _set() -> None:
                if not fut.done():
                    fut.set_result(outcome)
            try:
                loop.call_soon_threadsafe(_set)
            except RuntimeError:  # loop closed: the app is gone
                pass

        post(JobStarted(job.id, job.kind, job.params))
        threading.Thread(target=self._thread_main, name=f"tokenforge-{job.kind}-{job.id}",
                         args=(job, fn, args, kwargs, post, stream, needs_model, deliver),
                         daemon=True).start()
        try:
            done, _ = await asyncio.wait({fut}, timeout=job.timeout)
            if not done:
                job.cancel("timeout")
                done, _ = await asyncio.wait({fut}, timeout=self.grace)
                if not done:
                    job.state = "stuck"
                    post(JobStuck(job.id, job.kind, (job.timeout or 0) + self.grace,
                                  job.cancel_reason))
                    await fut
            outcome = fut.result()
        except asyncio.CancelledError:  # our task was cancelled (app closing): stop the thread
            job.cancel("shutdown")
            job.state = "cancelled"
            raise
        self._finish(job, outcome, post)

    def _finish(self, job: Job, outcome: tuple, post: Post) -> None:
        elapsed = job.elapsed
        if outcome[0] == "ok":
            job.result = outcome[1]
            if job.token.cancelled:  # engine returned a partial result after a cancel
                job.state = "cancelled"
                post(JobCancelled(job.id, job.kind, job.cancel_reason or "user", job.result, elapsed))
            else:
                job.state = "finished"
                post(JobFinished(job.id, job.kind, job.result, elapsed))
        elif outcome[0] == "cancelled":
            job.state = "cancelled"
            post(JobCancelled(job.id, job.kind, job.cancel_reason or outcome[1].reason, None, elapsed))
        else:
            err, detail = outcome[1], outcome[2]
            job.error = err
            job.state = "failed"
            user = isinstance(err, EngineError)
            # every failure goes to the TUI log: bad input (InputError, e.g. "token 0 cannot be
            # split") as one line, any other failure with its traceback
            if isinstance(err, InputError):
                log.info("job %s (%s): %s", job.id, job.kind, err)
            else:
                log.log(logging.WARNING if user else logging.ERROR, "job %s (%s) failed after "
                        "%.1f s (params %s):\n%s", job.id, job.kind, elapsed, job.params, detail)
            msg = str(err) if user else f"{type(err).__name__}: {err}"
            post(JobFailed(job.id, job.kind, err, msg or type(err).__name__,
                           getattr(err, "hint", "") or "", detail, user, elapsed))
