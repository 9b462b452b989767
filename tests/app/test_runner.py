"""The dispatch bridge without a UI: outcomes, throttling with tail flush, cancel, timeout,
stuck threads, the model lock and shutdown."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from waiting import DEADLINE_S, eventually

from app.messages import (JobCancelled, JobFailed, JobFinished, JobProgressed, JobStarted,
                          JobStuck, TokensGenerated)
from app.runner import ProgressPump, Runner
from engine.errors import InputError
from engine.progress import Progress, report


def make_runner(**kw):
    seen: list = []
    return Runner(seen.append, **kw), seen


async def wait_done(job, limit=DEADLINE_S):
    await asyncio.wait_for(job.wait(), limit)


async def entered(event: threading.Event) -> None:
    """Until the worker thread has set ``event`` (it is inside the engine function)."""
    assert await asyncio.to_thread(event.wait, DEADLINE_S), "the job never started"


def waiting_for_model(seen, job) -> bool:
    return any(isinstance(m, JobProgressed) and m.job_id == job.id
               and "waiting for the model" in m.progress.message for m in seen)


async def test_finished_job_posts_in_order():
    r, seen = make_runner()

    def fn(x, *, progress, cancel):
        report(progress, "generate", 1, 2, "half")
        report(progress, "generate", 2, 2, "all")
        return x * 2

    job = r.start("chat", fn, 21, params={"x": 21})
    await wait_done(job)
    kinds = [type(m) for m in seen]
    assert kinds[0] is JobStarted and kinds[-1] is JobFinished
    assert seen[-1].result == 42 and job.state == "finished"
    assert [m.progress.step for m in seen if isinstance(m, JobProgressed)] == [1, 2]
    assert r.in_flight() == 0 and not r.busy


async def test_progress_throttled_and_tail_flushed():
    r, seen = make_runner()
    n = 20000

    def fn(*, progress, cancel):
        for i in range(n):
            progress(Progress("search", i, None, "tight loop", {"best_score": i}))
        return "ok"

    job = r.start("advtok", fn, needs_model=False)
    await wait_done(job)
    prog = [m for m in seen if isinstance(m, JobProgressed)]
    assert len(prog) < n / 20  # throttled to ~20 Hz, not one message per report
    assert prog[-1].progress.step == n - 1  # the newest report is never lost


def test_pump_sends_phase_change_at_once():
    seen = []
    pump = ProgressPump(seen.append, 1, "advtok", every=10.0)
    pump(Progress("vocab", 1, 10))
    pump(Progress("vocab", 2, 10))  # throttled
    pump(Progress("mdd", 1, 10))    # new phase: at once
    pump(Progress("mdd", 10, 10))   # final step: at once
    assert [(m.progress.phase, m.progress.step) for m in seen] == [("vocab", 1), ("mdd", 1), ("mdd", 10)]
    pump(Progress("mdd", 10, None))
    pump.flush()
    assert len(seen) == 4


async def test_tokens_batched_and_complete():
    r, seen = make_runner()
    words = [f"w{i} " for i in range(3000)]

    def fn(*, on_token, progress, cancel):
        for i, w in enumerate(words):
            on_token(w, i)
        return "done"

    job = r.start("chat", fn, stream=True)
    await wait_done(job)
    toks = [m for m in seen if isinstance(m, TokensGenerated)]
    assert "".join(m.text for m in toks) == "".join(words)
    assert len(toks) < len(words) / 10
    assert toks[-1].n_total == len(words)


async def test_cancel_stops_the_thread():
    """The function loops until its token says stop: the job ending at all is the proof."""
    r, seen = make_runner()
    looked = threading.Event()

    def fn(*, progress, cancel):
        while True:
            looked.set()
            cancel.check()
            cancel.wait(0.01)

    job = r.start("tree", fn)
    await entered(looked)
    job.cancel("user")
    await wait_done(job)
    assert isinstance(seen[-1], JobCancelled) and seen[-1].reason == "user"
    assert job.thread_done.is_set() and r.in_flight() == 0


async def test_timeout_cancels_the_engine():
    r, seen = make_runner()
    checks = []

    def fn(*, progress, cancel):
        while not cancel.wait(0.01):
            checks.append(1)
        cancel.check()

    t0 = time.monotonic()
    job = r.start("chat", fn, timeout=0.3)
    await wait_done(job)  # fn never returns by itself: only the timeout's cancel ends it
    assert time.monotonic() - t0 > 0.25  # not before its time (how much later is the load)
    assert isinstance(seen[-1], JobCancelled) and seen[-1].reason == "timeout"
    assert r.in_flight() == 0  # nothing keeps burning CPU after the timeout


async def test_partial_result_after_cancel_is_a_cancel():
    r, seen = make_runner()
    inside = threading.Event()

    def fn(*, progress, cancel):
        inside.set()
        cancel.wait(DEADLINE_S)
        return "partial answer"  # chat returns what it has instead of raising

    job = r.start("chat", fn)
    await entered(inside)  # a cancel before fn starts would never call it
    job.cancel("user")
    await wait_done(job)
    assert isinstance(seen[-1], JobCancelled) and seen[-1].partial == "partial answer"


async def test_stuck_thread_reported_then_resolved():
    r, seen = make_runner(grace=0.2)
    release = threading.Event()

    def fn(*, progress, cancel):
        release.wait(DEADLINE_S)  # ignores its token until the test lets it go
        return "late"

    job = r.start("chat", fn, timeout=0.1)
    await eventually(lambda: any(isinstance(m, JobStuck) for m in seen))
    assert job.state == "stuck" and r.in_flight() == 1 and r.busy
    release.set()
    await wait_done(job)
    assert isinstance(seen[-1], JobCancelled) and seen[-1].reason == "timeout"
    assert r.in_flight() == 0


async def test_engine_errors_become_messages():
    r, seen = make_runner()

    def bad_input(*, progress, cancel):
        raise InputError("empty prompt", hint="type something")

    def bug(*, progress, cancel):
        raise ZeroDivisionError("oops")

    j1 = r.start("chat", bad_input)
    await wait_done(j1)
    f1 = seen[-1]
    assert isinstance(f1, JobFailed) and f1.user_error and f1.message == "empty prompt"
    assert f1.hint == "type something"
    j2 = r.start("chat", bug)
    await wait_done(j2)
    f2 = seen[-1]
    assert isinstance(f2, JobFailed) and not f2.user_error and "ZeroDivisionError" in f2.message
    assert "Traceback" in f2.detail


async def test_model_lock_serialises_model_jobs():
    """The first job holds the model until every other one is seen waiting for it; none of
    them got inside meanwhile, and all run, one at a time, once it lets go."""
    r, seen = make_runner()
    inside, overlap = [0], []
    lock = threading.Lock()
    first_in, release = threading.Event(), threading.Event()

    def fn(*, progress, cancel):
        with lock:
            inside[0] += 1
            overlap.append(inside[0])
        first_in.set()
        release.wait(DEADLINE_S)
        with lock:
            inside[0] -= 1

    jobs = [r.start("chat", fn)]
    await entered(first_in)
    jobs += [r.start("chat", fn) for _ in range(3)]
    await eventually(lambda: all(waiting_for_model(seen, j) for j in jobs[1:]))
    assert overlap == [1]
    release.set()
    await asyncio.wait_for(asyncio.gather(*(j.wait() for j in jobs)), DEADLINE_S)
    assert overlap == [1, 1, 1, 1] and all(j.state == "finished" for j in jobs)


async def test_waiting_for_the_model_lock_is_cancellable():
    r, seen = make_runner()
    holding, release = threading.Event(), threading.Event()

    def holder(*, progress, cancel):
        holding.set()
        release.wait(DEADLINE_S)

    def waiter(*, progress, cancel):
        return "ran"

    j1 = r.start("chat", holder)
    await entered(holding)
    j2 = r.start("chat", waiter)
    await eventually(lambda: waiting_for_model(seen, j2))
    j2.cancel("user")
    await wait_done(j2)
    assert j2.state == "cancelled" and j2.result is None
    waits = [m for m in seen if isinstance(m, JobProgressed) and m.job_id == j2.id]
    assert waits and "waiting for the model" in waits[0].progress.message
    release.set()
    await wait_done(j1)


async def test_shutdown_grace():
    """A job that heeds its token ends within the grace; one that ignores it outlives it."""
    r, _ = make_runner()
    coop_in, stubborn_in, release = threading.Event(), threading.Event(), threading.Event()

    def coop(*, progress, cancel):
        coop_in.set()
        while not cancel.wait(0.01):
            pass

    def stubborn(*, progress, cancel):
        stubborn_in.set()
        release.wait(DEADLINE_S)  # ignores its token

    r.start("chat", coop, needs_model=False)
    await entered(coop_in)
    assert await r.shutdown(grace=DEADLINE_S)
    j = r.start("chat", stubborn, needs_model=False)
    await entered(stubborn_in)
    assert not await r.shutdown(grace=0.1)  # it cannot end: it waits for `release`
    release.set()
    await wait_done(j)


def test_timeout_for_kind():
    r, _ = make_runner(timeouts={"chat": 12.0, "load": None, "tree": 0})
    assert r.timeout_for("chat") == 12.0
    assert r.timeout_for("load") is None and r.timeout_for("tree") is None
    assert r.timeout_for("unknown") == 600.0


async def test_run_aside_keeps_the_loop_free_and_is_no_job():
    r, seen = make_runner()
    release = threading.Event()
    where: list = []

    def read(path, *, scale=1):
        where.append(threading.current_thread())
        release.wait(DEADLINE_S)
        return len(path) * scale

    task = asyncio.ensure_future(r.run_aside(read, "abc", scale=2, name="probe"))
    await eventually(lambda: where)  # the loop keeps running while the call blocks
    assert where[0].daemon and where[0].name == "tokenforge-probe"
    assert not task.done() and not r.busy and r.in_flight() == 0 and seen == []
    release.set()
    assert await asyncio.wait_for(task, DEADLINE_S) == 6

    def boom(path):
        raise InputError(f"no such file: {path}")

    with pytest.raises(InputError, match="no such file: x"):
        await r.run_aside(boom, "x")


async def test_throttled_report_is_sent_without_a_further_report():
    """A step that reports its message and then works silently (the GGUF tokenizer read: a
    minute without a report) must show that message, not the one before it."""
    seen: list = []
    pump = ProgressPump(seen.append, 1, "load", every=0.05)
    pump(Progress("load", 0, 4, "resolving default"))
    pump(Progress("load", 1, 4, "reading the tokenizer"))  # throttled: pending, nothing follows
    deadline = time.monotonic() + DEADLINE_S
    while len(seen) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert [m.progress.message for m in seen] == ["resolving default", "reading the tokenizer"]
    pump.flush()  # nothing pending: nothing more, and no timer left behind
    assert len(seen) == 2 and pump._timer is None


async def test_input_error_logged_as_one_line(caplog):
    """Bad input ("token 0 cannot be split") is the user's ordinary mistake: one log line, no
    traceback; an unexpected error keeps its traceback."""
    import logging

    r, seen = make_runner()

    def bad(*, progress, cancel):
        raise InputError("token 0 cannot be split")

    def broken(*, progress, cancel):
        raise RuntimeError("boom")

    with caplog.at_level(logging.DEBUG, logger="tokenforge.runner"):
        await wait_done(r.start("advtok", bad))
        await wait_done(r.start("advtok", broken))
    lines = [rec.getMessage() for rec in caplog.records]
    mine = [t for t in lines if "cannot be split" in t]
    assert mine and all("Traceback" not in t for t in mine)
    assert any("boom" in t and "Traceback" in t for t in lines)
    failed = [m for m in seen if isinstance(m, JobFailed)]
    assert [m.message for m in failed] == ["token 0 cannot be split", "RuntimeError: boom"]
