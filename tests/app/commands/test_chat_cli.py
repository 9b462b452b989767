"""`tokenforge chat` as a user drives it: Ctrl+C (SIGINT) during an answer stops only that answer,
the session continues; Ctrl+C at the prompt exits cleanly."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_lm):
    d = tmp_path_factory.mktemp("tiny") / "tiny-llama"
    tiny_lm.model.save_pretrained(str(d))
    tiny_lm.tokenizer.save_pretrained(str(d))
    return d


class _Reader:
    """Collects a process's stdout and stderr from background threads."""

    def __init__(self, proc):
        import threading

        self.buf = ""
        self.lock = threading.Lock()
        for f in (proc.stdout, proc.stderr):
            threading.Thread(target=self._pump, args=(f,), daemon=True).start()

    def _pump(self, f):
        for chunk in iter(lambda: f.read(1), ""):
            with self.lock:
                self.buf += chunk

    def until(self, needle: str, start: int = 0, timeout: float = 60.0) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                i = self.buf.find(needle, start)
            if i >= 0:
                return i + len(needle)
            time.sleep(0.05)
        raise AssertionError(f"{needle!r} not seen in: {self.buf[-500:]!r}")


def test_ctrl_c_stops_answer_then_exits_at_prompt(tiny_dir):
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "chat", "--model", str(tiny_dir), "--temperature", "1.0",
         "--max-new-tokens", "1900", "--seed", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=0)
    r = _Reader(proc)
    try:
        pos = r.until("commands:")
        proc.stdin.write("tell me everything\n")
        proc.stdin.flush()
        time.sleep(1.0)  # tokens are streaming
        proc.send_signal(signal.SIGINT)
        pos = r.until("stop: cancelled", pos)
        assert proc.poll() is None  # the session survived the interrupt
        proc.stdin.write("second message\n")
        proc.stdin.flush()
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # stops the second answer too (or it already ended)
        pos = r.until("stop:", pos)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)  # now at the prompt: exits
        rc = proc.wait(timeout=30)
        assert rc == 0
        assert "Traceback" not in r.buf
    finally:
        if proc.poll() is None:
            proc.kill()
