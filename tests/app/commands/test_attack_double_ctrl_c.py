"""Two Ctrl+C in a headless ``attack``: the second one leaves at once with exit 130 (os._exit
after flushing), not with SIGABRT from torch torn down under the running search thread."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_second_ctrl_c_exits_130_without_abort(tiny_lm, tmp_path):
    model_dir = tmp_path / "tiny"
    tiny_lm.model.save_pretrained(model_dir)
    tiny_lm.tokenizer.save_pretrained(model_dir)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "attack", "--model", str(model_dir), "--engine-path",
         "standard", "--request", "Please compose a friendly email to my landlord about rent",
         "--response", "Sure.", "--init", "random", "--max-neighbours", "100", "--iters", "500",
         "--samples", "0"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            err_lines.append(line)
            if line.startswith("it   1/"):
                proc.send_signal(signal.SIGINT)
                time.sleep(0.05)
                proc.send_signal(signal.SIGINT)
                break
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(err_lines) + err
    assert proc.returncode == 130, text[-800:]
    assert "terminate called" not in text and "Traceback" not in text
    # the first press is acknowledged; the second either lands ("interrupted twice") or finds the
    # process already gone (the cancelled run finished and left with 130 before it arrived)
    assert "interrupted: stopping" in text or "stop cancelled" in text
