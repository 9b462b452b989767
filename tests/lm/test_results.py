"""GenerationResult lives in a torch-free module, so the front end and its test fakes use the
real class without loading torch."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_results_module_does_not_import_torch():
    code = ("import sys\n"
            "from engine.lm.results import GenerationResult\n"
            "r = GenerationResult(text='a', token_ids=[1], prompt_tokens=1, prefill_tokens=1,\n"
            "    new_tokens=1, ttft_s=0.0, decode_tok_s=0.0, total_s=0.0, stop_reason='eos')\n"
            "assert r.to_dict()['stop_reason'] == 'eos'\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
