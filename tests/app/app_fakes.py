"""A fast fake engine for the TUI tests (the app/engines.py interface with scripted tokens; every
wait is ``cancel.wait`` so a cancelled fake ends at once). The polling helpers live in
tests/waiting.py; ``until`` is imported here too since every TUI test imports it from here."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Optional

from engine.lm.sampling_defaults import ModelSamplingDefaults
from engine.lm.results import GenerationResult  # torch-free: the TUI tests never load torch
from engine.progress import Cancelled, report
from waiting import DEADLINE_S, eventually, until  # noqa: F401 (the TUI tests' helpers)


#: valid bench records (the fixture also holds a deliberately broken line, skipped here)
BENCH_FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "bench_runs.jsonl"


def bench_lines() -> list[str]:
    out = []
    for line in BENCH_FIXTURE.read_text(encoding="utf-8").splitlines():
        try:
            json.loads(line)
        except json.JSONDecodeError:
            continue
        out.append(line)
    return out


class FakeLM:
    name = "fake-lm"
    sampling_defaults = ModelSamplingDefaults()  # says nothing: the built-in values stay
    context_length = 2048
    eos_ids = [0]
    device = "cpu"

    def describe(self) -> str:
        return "fake-lm · cpu · float32"


class FakeSession:
    def __init__(self, system: Optional[str]) -> None:
        self.system = system
        self.turns: list[tuple[str, str]] = []
        self.resets = 0

    def reset(self, system: Any = None) -> None:
        self.system = system
        self.turns = []
        self.resets += 1

    def to_markdown(self) -> str:
        return "\n".join(f"**User:** {u}\n\n**Assistant:** {a}" for u, a in self.turns)

    def to_json(self) -> str:
        from engine.export import job_document  # the real session's envelope

        return json.dumps(job_document(
            "chat", {"turns": [{"user": u, "assistant": a} for u, a in self.turns]},
            settings={"system": self.system}, model=FakeLM.name))


class FakeEngine:
    """The app/engines.py interface with scripted tokens; every wait is ``cancel.wait``, except
    two gates the test opens itself: ``load_gate`` (loading waits for it, still cancellable)
    and ``stubborn`` (a chat call blocks on it without looking at its token: a stuck call)."""

    def __init__(self, tokens: tuple[str, ...] = ("Hello", ",", " **world**", "!"),
                 token_delay: float = 0.0, fail: Optional[BaseException] = None,
                 stubborn: Optional[threading.Event] = None,
                 load_error: Optional[BaseException] = None,
                 load_gate: Optional[threading.Event] = None, bench_delay: float = 0.0,
                 bench_fail: Optional[BaseException] = None, prefill_delay: float = 0.0) -> None:
        self.tokens, self.token_delay = tokens, token_delay
        self.prefill_delay = prefill_delay  # a long prompt: "prefill" reports, then tokens
        self.fail, self.stubborn = fail, stubborn
        self.load_error, self.load_gate = load_error, load_gate
        self.sent: list[str] = []
        self.cancel_seen = 0
        self.sessions: list[FakeSession] = []
        self.regenerated: list[str] = []
        self.bench_delay, self.bench_fail = bench_delay, bench_fail
        self.bench_calls: list[tuple[dict, str]] = []
        self.exports: list[tuple[str, str]] = []

    def load_model(self, spec, device="auto", dtype="auto", trust_remote_code=False,
                   engine_path="fast", *, progress=None, cancel=None):
        for i in range(3):
            report(progress, "load", i, 3, f"fake load step {i}")
            if cancel is not None and cancel.cancelled:
                raise Cancelled("user")
        while self.load_gate is not None and not self.load_gate.wait(0.01):
            if cancel is not None and cancel.cancelled:
                raise Cancelled("user")
        if self.load_error is not None:
            raise self.load_error
        report(progress, "load", 3, 3, "loaded")
        return FakeLM()

    def measure_speed(self, lm, *, progress=None, cancel=None):
        from app.engines import SpeedResult

        return SpeedResult(tok_s=50.0, ttft_s=0.01, tokens=8)

    def set_engine_path(self, lm, path):
        lm.engine_path = path

    def vocab_available(self) -> bool:
        return False

    def new_chat(self, lm, system):
        s = FakeSession(system)
        self.sessions.append(s)
        return s

    def chat_send(self, session, text, sampling, *, on_token=None, progress=None, cancel=None,
                  observe=None):
        self.sent.append(text)
        if self.fail is not None:
            raise self.fail
        if self.stubborn is not None:
            self.stubborn.wait(DEADLINE_S)  # one long call that never looks at its token
        if self.prefill_delay:  # like ChatSession: a cancel before the first token adds nothing
            for i in range(1, 11):
                report(progress, "prefill", i * 100, 1000, "prefilling", tok_s=100.0, eta_s=1.0)
                if cancel is not None and cancel.wait(self.prefill_delay / 10):
                    return GenerationResult(text="", token_ids=[], prompt_tokens=1000, prefill_tokens=0,
                                      new_tokens=0, ttft_s=0.0, decode_tok_s=0.0, total_s=0.0,
                                      stop_reason="cancelled", discarded=True)
        out: list[str] = []
        stop = "eos"
        t0 = time.perf_counter()
        for i, tok in enumerate(self.tokens):
            if cancel is not None and (cancel.wait(self.token_delay) if self.token_delay
                                       else cancel.cancelled):
                self.cancel_seen += 1
                stop = "cancelled"
                break
            out.append(tok)
            if on_token is not None:
                on_token(tok, i + 1)
            report(progress, "generate", i + 1, len(self.tokens), "generating", tok_s=100.0)
        text_out = "".join(out)
        session.turns.append((text, text_out))
        return GenerationResult(text=text_out, token_ids=list(range(1, len(out) + 1)), prompt_tokens=5,
                          prefill_tokens=5, new_tokens=len(out), ttft_s=0.01,
                          decode_tok_s=100.0, total_s=time.perf_counter() - t0, stop_reason=stop)

    def chat_regenerate(self, session, sampling, *, turn=None, on_token=None, progress=None,
                        cancel=None, observe=None):
        """Like ChatSession.regenerate: drop the last turn, answer its message again."""
        if not session.turns:
            from engine.errors import InputError

            raise InputError("nothing to regenerate: send a message first")
        user, _ = session.turns.pop()
        self.regenerated.append(user)
        return self.chat_send(session, user, sampling, on_token=on_token, progress=progress,
                              cancel=cancel)



    # -- bench grid (dashboard) ---------------------------------------------------------------
    def bench(self, lm, cfg, out, *, progress=None, cancel=None):
        """Like engine.bench.harness.run_bench: one "bench" report and one appended record (from the
        fixture) per grid cell, ``cancel.wait(bench_delay)`` between them; a cancel returns the
        summary with ``cancelled=True`` (the records written so far stay)."""
        self.bench_calls.append((dict(cfg), str(out)))
        if self.bench_fail is not None:
            raise self.bench_fail
        lines = bench_lines()
        from engine.bench.harness import BenchSummary  # the real result type

        summary = BenchSummary(run_id="fake", out=Path(out))
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        for i, line in enumerate(lines, 1):
            if cancel is not None and (cancel.wait(self.bench_delay) if self.bench_delay
                                       else cancel.cancelled):
                self.cancel_seen += 1
                summary.cancelled = True
                return summary
            rec = json.loads(line)
            report(progress, "bench", i, len(lines), f"{rec['method']} · {rec['prompt_id']}",
                   method=rec["method"], prompt=rec["prompt_id"], repeat=rec["repeat"])
            with open(out, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            summary.written += 1
        return summary

    def bench_export(self, runs, folder, *, progress=None, cancel=None):
        self.exports.append((str(runs), str(folder)))
        Path(folder).mkdir(parents=True, exist_ok=True)
        path = Path(folder) / f"bench-{Path(runs).stem}.csv"
        path.write_text("method\n", encoding="utf-8")
        report(progress, "bench", 1, 1, "exported")
        return [str(path)]
