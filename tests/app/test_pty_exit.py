"""The real TUI process under a pseudo-terminal (as a user runs it): it starts on a local model,
draws, and Ctrl+C leaves — once when idle (graceful, rc 0), twice during a running answer (force
quit, rc 130) — with the terminal restored (echo and canonical mode back, no process left)."""
from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

pytestmark = pytest.mark.slow  # starts real processes (the fast loop skips them)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_lm):
    d = tmp_path_factory.mktemp("tinymodel") / "tiny-pty"
    tiny_lm.model.save_pretrained(str(d))
    tiny_lm.tokenizer.save_pretrained(str(d))
    return d


@contextmanager
def _app_in_pty(model: Path | str, cache: Path | None) -> Iterator[tuple[subprocess.Popen, int, int]]:
    """The TUI process on a 120×40 pseudo-terminal: (process, master fd, slave fd); killed and
    the fds closed on the way out, whatever the test did."""
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = dict(os.environ, TERM="xterm-256color", TEXTUAL_ANIMATIONS="none", HF_HUB_OFFLINE="1")
    if cache is not None:
        env["TOKENFORGE_CACHE"] = str(cache)
    p = subprocess.Popen([sys.executable, "-m", "app.cli", "--model", str(model)], cwd=ROOT,
                         stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    try:
        yield p, master, slave
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        os.close(master)
        os.close(slave)


def _read_until(master: int, needle: bytes, timeout: float) -> bytes:
    buf = b""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                buf += os.read(master, 65536)
            except OSError:
                break
            if needle in buf:
                return buf
    return buf


def _drain(master: int, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                os.read(master, 65536)
            except OSError:
                return


def _finish(p: subprocess.Popen, master: int, timeout: float) -> int:
    end = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < end:
        _drain(master, 0.1)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        pytest.fail("the app did not exit")
    return p.returncode


def _write_all(master: int, data: bytes) -> None:
    """A pty takes a few KB at a time (the master is non-blocking): write in pieces, reading the
    app's output meanwhile so neither side stalls."""
    while data:
        try:
            n = os.write(master, data[:1024])
        except BlockingIOError:
            n = 0
        data = data[n:]
        _drain(master, 0.02)


def _tty_sane(slave: int) -> bool:
    lflag = termios.tcgetattr(slave)[3]
    return bool(lflag & termios.ECHO) and bool(lflag & termios.ICANON) and bool(lflag & termios.ISIG)


@pytest.mark.timeout(120)
def test_ctrl_c_when_idle_quits_gracefully_and_restores_the_terminal(tiny_dir, tmp_path):
    with _app_in_pty(tiny_dir, tmp_path / "cache") as (p, master, slave):
        out = _read_until(master, b"tiny-pty", 60)
        assert b"tiny-pty" in out, out[-500:]  # the header names the model: the app is drawn
        _drain(master, 2.0)  # let the background load / speed probe settle
        assert not _tty_sane(slave)  # the app holds the terminal in raw mode
        os.write(master, b"\x03")
        rc = _finish(p, master, 20)
        assert rc == 0
        assert _tty_sane(slave)


@pytest.mark.timeout(180)
def test_double_ctrl_c_mid_answer_force_quits_with_130(smol_lm):
    """The bundled model (converted into cache/ by the session fixture) answers slowly enough
    for Ctrl+C to land mid-answer: the first press cancels the job and says so (not "Quitting",
    the idle message), the second force-quits."""
    with _app_in_pty("default", None) as (p, master, slave):
        out = _read_until(master, b"SmolLM2", 90)
        assert b"SmolLM2" in out
        _drain(master, 4.0)  # model load and the speed probe
        os.write(master, b"Write a very long story about the sea, with many chapters.\r")
        _drain(master, 1.0)  # the answer is streaming now (256 tokens take seconds)
        os.write(master, b"\x03")
        seen = _read_until(master, b"Cancelling", 10)
        assert b"Cancelling" in seen  # "Cancelling 1 job(s)… press Ctrl+C again to force quit"
        os.write(master, b"\x03")
        rc = _finish(p, master, 20)
        assert rc == 130
        assert _tty_sane(slave)


SHIFT_HOME = b"\x1b[1;2H"  # selects from the cursor to the line start in the message box


@pytest.mark.timeout(180)
def test_ctrl_c_with_selected_text_still_cancels_and_force_quits(smol_lm):
    """Issue 16.1: the message box has focus with its text selected (its own copy binding would
    take Ctrl+C). Mid-answer the first press still cancels ("Cancelling", the app stays); idle it
    copies ("Copied", the app stays); a second press force-quits with 130, terminal restored."""
    with _app_in_pty("default", None) as (p, master, slave):
        assert b"SmolLM2" in _read_until(master, b"SmolLM2", 90)
        _drain(master, 4.0)
        os.write(master, b"Write a very long story about the sea, with many chapters.\r")
        _drain(master, 1.0)
        os.write(master, b"selected words" + SHIFT_HOME)
        _drain(master, 0.3)
        os.write(master, b"\x03")
        assert b"Cancelling" in _read_until(master, b"Cancelling", 10)
        _drain(master, 3.0)  # past the 2 s force window
        assert p.poll() is None  # cancelled, not quit
        os.write(master, SHIFT_HOME)
        _drain(master, 0.3)
        os.write(master, b"\x03")
        assert b"Copied" in _read_until(master, b"Copied", 10)
        assert p.poll() is None
        os.write(master, b"\x03")
        assert _finish(p, master, 20) == 130
        assert _tty_sane(slave)


@pytest.mark.timeout(240)
def test_escape_during_a_long_prefill_lands_fast(smol_lm):
    """Issue 16.2: a ~5,000-token message (pasted) is prefilled in chunks with progress; Esc
    mid-prefill ends the job quickly (generous bound: the target is < 1 s on an idle machine)
    and the app stays up with the message back in the box."""
    with _app_in_pty("default", None) as (p, master, slave):
        assert b"SmolLM2" in _read_until(master, b"SmolLM2", 90)
        _drain(master, 4.0)
        text = b"The sea is calm today and the boats are out. " * 450
        _write_all(master, b"\x1b[200~" + text + b"\x1b[201~")
        _drain(master, 1.0)
        os.write(master, b"\r")
        seen = _read_until(master, b"prefilled", 60)
        assert b"prefilled" in seen, seen[-800:]  # "prefilled N/M prompt tokens"
        _drain(master, 1.0)  # well inside the prefill (it takes several seconds here)
        t0 = time.monotonic()
        os.write(master, b"\x1b")
        out = _read_until(master, b"not added", 30)
        took = time.monotonic() - t0
        assert b"not added" in out, out[-800:]
        print(f"cancel during a {len(text):,}-byte prefill landed in {took:.2f} s")
        assert took < 6.0, f"cancel took {took:.1f} s"
        assert p.poll() is None
        os.write(master, b"\x03\x03")
        assert _finish(p, master, 20) == 130
        assert _tty_sane(slave)
