"""Ctrl+C in every headless command, on real processes (app/interrupt.py).

Each test starts ``python -m app.cli …`` on a saved tiny model with
``TOKENFORGE_TEST_SIGNAL_POINTS`` naming where the process waits for a press: it prints
``phase:<name>`` there and goes on only once the SIGINT has arrived, so the press lands in that
phase however loaded the machine is (no sleeps). The checks: the exit code (130 after a press, 0
when Ctrl+C at chat's prompt leaves), that whatever was written parses whole, and under a
pseudo-terminal that the terminal's attributes are as before and the cursor is visible."""
from __future__ import annotations

import csv
import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[3]
DEADLINE = 300.0  # seconds for any one awaited marker: generous, a loaded machine is slow
LONG_PROMPT = "Tell me about the sea and the boats that sail on it. " * 12  # > 64 tokens: chunked prefill

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _env(points: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "HF_HUB_OFFLINE": "1",
            "TOKENFORGE_TEST_SIGNAL_POINTS": points}


class Run:
    """A command on pipes; stdout and stderr collected by threads."""

    def __init__(self, argv: list[str], points: str, cwd: Path = ROOT,
                 stdin: Optional[int] = subprocess.DEVNULL) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", *argv], cwd=cwd,
                                     env=_env(points), stdin=stdin, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.out = bytearray()
        self.err = bytearray()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._pump, args=(f, buf), daemon=True)
                         for f, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()

    def _pump(self, f, buf: bytearray) -> None:
        for chunk in iter(lambda: f.read1(65536), b""):
            with self._lock:
                buf.extend(chunk)

    def text(self) -> str:
        with self._lock:
            return self.err.decode("utf-8", "replace")

    def wait_for(self, needle: str, start: int = 0) -> int:
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            i = self.text().find(needle, start)
            if i >= 0:
                return i + len(needle)
            if self.proc.poll() is not None and needle not in self.text():
                for t in self._threads:
                    t.join(5)
                if needle in self.text():
                    continue
                pytest.fail(f"exited {self.proc.returncode} before {needle!r}: {self.text()[-1500:]}")
            select.select([], [], [], 0.05)
        pytest.fail(f"{needle!r} not seen: {self.text()[-1500:]}")

    def press(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def finish(self) -> int:
        try:
            rc = self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"did not exit: {self.text()[-1500:]}")
        for t in self._threads:
            t.join(10)
        err = self.text()
        assert "Traceback" not in err and "terminate called" not in err, err[-1500:]
        return rc


def _interrupted(argv: list[str], point: str, *, twice: Optional[str] = None,
                 cwd: Path = ROOT) -> Run:
    """Run ``argv``; press once when it reaches ``point`` and, with ``twice``, again when it then
    reaches that phase. Returns the finished run (exit code in .proc.returncode)."""
    r = Run(argv, point if twice is None else f"{point},{twice}", cwd=cwd)
    r.wait_for(f"phase:{point}")
    r.press()
    if twice is not None:
        r.wait_for(f"phase:{twice}")
        r.press()
    r.finish()
    return r


def _model(tiny_dir: Path) -> list[str]:
    return ["--model", str(tiny_dir), "--engine-path", "standard"]


# ---------------------------------------------------------------------------- chat --prompt
def _chat(tiny_dir: Path, prompt: str = "Tell me everything about the sea.") -> list[str]:
    return ["chat", *_model(tiny_dir), "--prompt", prompt, "--json", "--temperature", "1.0",
            "--seed", "1", "--max-new-tokens", "1800"]


def test_chat_press_during_model_load_exits_130_with_nothing_written(tiny_dir):
    r = _interrupted(_chat(tiny_dir), "load-weights")
    assert r.proc.returncode == 130, r.text()[-800:]
    assert "interrupted: stopping" in r.text()
    assert r.out.strip() == b""


def test_chat_press_during_prefill_leaves_no_answer(tiny_dir):
    r = _interrupted(_chat(tiny_dir, LONG_PROMPT), "prefill")
    assert r.proc.returncode == 130, r.text()[-800:]
    if r.out.strip():  # stopped in the message's prefill: a result with no answer
        res = json.loads(r.out)
        assert res["stop_reason"] == "cancelled" and res["token_ids"] == [] and res["discarded"]
    else:              # stopped in the system prompt's prefill: nothing to write
        assert "interrupted" in r.text()


def test_chat_press_during_generation_writes_the_partial_answer(tiny_dir):
    r = _interrupted(_chat(tiny_dir), "generate")
    assert r.proc.returncode == 130, r.text()[-800:]
    res = json.loads(r.out)
    assert res["stop_reason"] == "cancelled"
    assert 1 <= res["new_tokens"] < 1800 and len(res["tokens"]) == res["new_tokens"]


def test_chat_second_press_while_writing_exits_130_at_once(tiny_dir):
    r = _interrupted(_chat(tiny_dir), "generate", twice="write")
    assert r.proc.returncode == 130, r.text()[-800:]
    assert "interrupted twice" in r.text()
    assert r.out.strip() == b""  # the answer was not printed yet: absent, never cut


# ---------------------------------------------------------------------------- tokenize, inspect
def test_tokenize_press_during_load_and_during_the_work(tiny_dir, tmp_path):
    out = tmp_path / "t.json"
    argv = ["tokenize", "--model", str(tiny_dir), "a long word: " + "naïve café " * 40,
            "--count", "--out", str(out)]
    for point in ("load", "tokenize"):
        r = _interrupted(argv, point)
        assert r.proc.returncode == 130, r.text()[-800:]
        assert not out.exists() and r.out.strip() == b""
    r = _interrupted(argv, "write")  # the result is finished: written whole, still 130
    assert r.proc.returncode == 130, r.text()[-800:]
    assert int(json.loads(out.read_text(encoding="utf-8"))["count"]) > 1


def test_inspect_press_during_load_and_before_the_answer(tiny_dir):
    for point in ("load-weights", "inspect"):
        r = _interrupted(["inspect", *_model(tiny_dir), "--prompt", "What is 2+2?",
                          "--max-new-tokens", "64", "--json"], point)
        assert r.proc.returncode == 130, r.text()[-800:]
        assert r.out.strip() == b""


# ---------------------------------------------------------------------------- attack
def _attack(tiny_dir: Path, out: Path) -> list[str]:
    return ["attack", *_model(tiny_dir), "--request",
            "Please compose a friendly email to my landlord about rent", "--response", "Sure.",
            "--init", "random", "--max-neighbours", "100", "--iters", "500", "--samples", "0",
            "--json", str(out)]


def test_attack_press_during_search_writes_the_best_so_far(tiny_dir, tmp_path):
    out = tmp_path / "a.json"
    r = _interrupted(_attack(tiny_dir, out), "search")
    assert r.proc.returncode == 130, r.text()[-800:]
    doc = json.loads(out.read_text(encoding="utf-8"))
    res = doc["result"]
    assert doc["state"] == "cancelled" and res["stop_reason"] == "cancelled"
    assert "".join(res["best_tokens"]) == res["request_text"]
    assert b"stop cancelled" in r.out


def test_attack_press_during_load_then_second_press_while_writing(tiny_dir, tmp_path):
    out = tmp_path / "a.json"
    r = _interrupted(_attack(tiny_dir, out), "load-weights")
    assert r.proc.returncode == 130 and not out.exists(), r.text()[-800:]
    r = _interrupted(_attack(tiny_dir, out), "search", twice="write")
    assert r.proc.returncode == 130 and "interrupted twice" in r.text(), r.text()[-800:]
    assert not out.exists()  # the second press came before the write: absent, never cut


ROWS = [("Write a haiku about rain", "Sure, here is a haiku", "Haiku", "Poetry"),
        ("Name three colours", "Sure, here are three colours", "Colours", "Lists"),
        ("Describe a sunny day", "Sure, here is a description", "Sunny", "Poetry")]


def _rows(path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["Index", "Goal", "Target", "Behavior", "Category", "Source"])
        for i, row in enumerate(ROWS, 1):
            w.writerow([i, *row, "synthetic"])
    return path


def _dataset(tiny_dir: Path, rows: Path, out: Path) -> list[str]:
    return ["attack", *_model(tiny_dir), "--dataset", str(rows), "--out", str(out), "--iters",
            "2", "--samples", "2", "--sample-tokens", "4", "--seed", "3", "--judge", "refusal"]


def _records(path: Path) -> list[dict]:
    return [json.loads(s) for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]


def test_attack_dataset_press_after_a_row_keeps_the_rows_done(tiny_dir, tmp_path):
    rows, out = _rows(tmp_path / "rows.csv"), tmp_path / "results.jsonl"
    r = _interrupted(_dataset(tiny_dir, rows, out), "row-done-1")
    assert r.proc.returncode == 130, r.text()[-800:]
    recs = _records(out)
    assert [x["id"] for x in recs] == ["Haiku"]  # row 2 was stopped: not written, redone later
    assert "interrupted" in r.text()


@pytest.fixture(scope="module")
def results(tiny_dir, tmp_path_factory):
    """A finished dataset run's results file (made once, in a real process)."""
    d = tmp_path_factory.mktemp("irq-results")
    rows, out = _rows(d / "rows.csv"), d / "results.jsonl"
    r = Run(_dataset(tiny_dir, rows, out), "")
    assert r.finish() == 0, r.text()[-800:]
    return out


def test_attack_judge_press_leaves_the_results_as_they_were(results, tmp_path):
    before = results.read_bytes()
    r = _interrupted(["attack", "judge", str(results), "--judge", "target"], "judge")
    assert r.proc.returncode == 130, r.text()[-800:]
    assert results.read_bytes() == before


def test_attack_report_and_merge_press_while_writing(results, tmp_path):
    csv_out = tmp_path / "t.csv"
    r = _interrupted(["attack", "report", str(results), "--csv", str(csv_out)], "write")
    assert r.proc.returncode == 130, r.text()[-800:]
    table = list(csv.reader(csv_out.open(encoding="utf-8")))
    assert len(table) > 1 and table[0]
    r = _interrupted(["attack", "merge", str(results)], "write")
    assert r.proc.returncode == 130, r.text()[-800:]
    assert len(_records(results)) == len(ROWS)


def test_attack_replay_press_gives_no_verdict(tiny_dir, results):
    r = _interrupted(["attack", "replay", str(results), "--row", "Haiku", "--model", str(tiny_dir)],
                     "replay")
    assert r.proc.returncode == 130, r.text()[-800:]
    assert b"replay matches" not in r.out and b"replay DIFFERS" not in r.out


# ---------------------------------------------------------------------------- search
def test_search_press_during_the_tree_writes_the_best_so_far(tiny_dir, tmp_path):
    out = tmp_path / "tree.json"
    r = _interrupted(["search", *_model(tiny_dir), "--prompt", "Write a story about a kitten.",
                      "--reward", "words:kitten,moon", "--rollouts", "200", "--horizon", "40",
                      "--batch", "2", "--json", str(out)], "tree")
    assert r.proc.returncode == 130, r.text()[-800:]
    doc = json.loads(out.read_text(encoding="utf-8"))
    res = doc["result"]
    assert doc["state"] == "cancelled" and res["tree"]["stop_reason"] == "cancelled"
    assert res["greedy"]["text"] is None  # the search did not complete: no greedy answer


# ---------------------------------------------------------------------------- bench
def _bench(tiny_dir: Path, out: Path) -> list[str]:
    return ["bench", *_model(tiny_dir), "--methods", "baseline,kv-reuse", "--repeats", "50",
            "--max-new-tokens", "8", "--no-warmup", "--kinds", "chat", "--out", str(out)]


def test_bench_press_during_the_grid_keeps_the_records_written(tiny_dir, tmp_path):
    out = tmp_path / "runs.jsonl"
    r = Run(_bench(tiny_dir, out), "")
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end and not (out.exists() and out.read_bytes().count(b"\n") >= 2):
        if r.proc.poll() is not None:
            break
        select.select([], [], [], 0.1)  # polls the file: the records written are the marker
    r.press()
    assert r.finish() == 130, r.text()[-800:]
    recs = _records(out)
    assert len(recs) >= 2 and all(x["status"] in ("ok", "error") for x in recs)
    csv_out = tmp_path / "agg.csv"
    r = _interrupted(["bench", "report", str(out), "--csv", str(csv_out)], "write")
    assert r.proc.returncode == 130, r.text()[-800:]
    assert len(list(csv.reader(csv_out.open(encoding="utf-8")))) > 1


# ---------------------------------------------------------------------------- chat in a terminal
class Pty:
    """``tokenforge chat`` on a pseudo-terminal that is its controlling terminal, so Ctrl+C is
    the byte 0x03 turned into SIGINT by the terminal, as for a user."""

    def __init__(self, argv: list[str], points: str) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.before = termios.tcgetattr(self.slave)
        env = {**_env(points), "TERM": "xterm-256color"}
        env.pop("NO_COLOR", None)

        def take_terminal() -> None:  # runs in the child after setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", *argv], cwd=ROOT, env=env,
                                     stdin=self.slave, stdout=self.slave, stderr=self.slave,
                                     start_new_session=True, preexec_fn=take_terminal)
        self.buf = b""

    def _read_some(self) -> bool:
        """Wait up to 0.2 s for output and take it; False once nothing more can come (the pty
        closed, or the process ended with nothing left to read)."""
        r, _, _ = select.select([self.master], [], [], 0.2)
        if not r:
            return self.proc.poll() is None
        try:
            self.buf += os.read(self.master, 65536)
        except OSError:
            return False
        return True

    def read_until(self, needle: bytes, start: int = 0) -> int:
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            i = self.buf.find(needle, start)
            if i >= 0:
                return i + len(needle)
            if not self._read_some():
                break
        pytest.fail(f"{needle!r} not seen: {self.buf[-1500:]!r}")

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")

    def finish(self) -> int:
        end = time.monotonic() + DEADLINE
        while self.proc.poll() is None and time.monotonic() < end:
            if not self._read_some():
                break
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"did not exit: {self.buf[-1500:]!r}")
        assert b"Traceback" not in self.buf, self.buf[-1500:]
        return self.proc.returncode

    def restored(self) -> bool:
        """The terminal's attributes are those it had before, and the cursor is not left hidden."""
        hidden = self.buf.rfind(b"\x1b[?25l")
        return termios.tcgetattr(self.slave) == self.before and (
            hidden < 0 or self.buf.find(b"\x1b[?25h", hidden) > hidden)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


def _repl(tiny_dir: Path) -> list[str]:
    return ["chat", *_model(tiny_dir), "--temperature", "1.0", "--max-new-tokens", "1900",
            "--seed", "1"]


def test_chat_prompt_press_stops_the_answer_then_exits_at_the_prompt(tiny_dir):
    t = Pty(_repl(tiny_dir), "generate")
    try:
        pos = t.read_until("› ".encode())
        os.write(t.master, b"tell me everything\r")
        pos = t.read_until(b"phase:generate", pos)
        t.ctrl_c()
        pos = t.read_until(b"stop: cancelled", pos)
        pos = t.read_until("› ".encode(), pos)  # back at the prompt, the session alive
        assert t.proc.poll() is None
        t.ctrl_c()
        assert t.finish() == 0
        assert t.restored()
    finally:
        t.close()


def test_chat_prompt_double_press_during_load_exits_130_terminal_restored(tiny_dir):
    """Held inside the load (its status line has hidden the cursor) for two presses: the second
    exits from the handler, which must give the terminal back itself."""
    t = Pty(_repl(tiny_dir), "load-weights,load-weights")
    try:
        pos = t.read_until(b"phase:load-weights")
        t.ctrl_c()
        pos = t.read_until(b"interrupted: stopping", pos)
        t.ctrl_c()
        assert t.finish() == 130
        assert b"interrupted twice" in t.buf[pos:]
        assert t.restored()
    finally:
        t.close()
