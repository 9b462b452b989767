"""`tokenforge search`: bad input is one line + exit 2; a real run prints the table and writes JSON."""
from __future__ import annotations

import json

import pytest

from app.cli import main


@pytest.mark.parametrize("argv, msg", [
    (["--prompt", "  ", "--reward", "words:a"], "--prompt is empty"),
    (["--prompt", "hi", "--reward", "nope:x"], "unknown reward"),
    (["--prompt", "hi", "--reward", "regex:(["], "invalid regex"),
    (["--prompt", "hi", "--reward", "words:a", "--rollouts", "0"], "rollouts"),
    (["--prompt", "hi", "--reward", "words:a", "--lambda", "-1"], "λ"),
    (["--prompt", "hi", "--reward", "plugin:os:getcwd"], "--allow-plugin"),
])
def test_bad_input_exits_2_with_one_line(argv, msg, capsys):
    assert main(["search", *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("error:") == 1


def test_horizon_beyond_context_exits_2(tiny_dir, capsys):
    rc = main(["search", "--model", str(tiny_dir), "--engine-path", "standard", "--prompt", "hi",
               "--reward", "words:a", "--horizon", "4000"])
    assert rc == 2 and "context" in capsys.readouterr().err


def test_search_run_prints_best_and_greedy_and_writes_json(tiny_dir, tmp_path, capsys):
    out = tmp_path / "res.json"
    rc = main(["search", "--model", str(tiny_dir), "--engine-path", "standard", "--prompt",
               "Tell me about the moon", "--system", "Be brief.", "--reward", "length:2-3t",
               "--rollouts", "4", "--horizon", "4", "--batch", "2", "--temperature", "0.7",
               "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "tree search (best)" in text and "greedy" in text
    doc = json.loads(out.read_text())  # the TUI's export envelope (engine/export.py)
    assert (doc["format"], doc["kind"], doc["state"]) == ("tokenforge-export/1", "tree", "finished")
    assert doc["model"] and doc["started_at"] and doc["finished_at"] and doc["exported_at"]
    s, data = doc["settings"], doc["result"]
    assert (s["prompt"], s["system"], s["rollouts"], s["temperature"]) == \
        ("Tell me about the moon", "Be brief.", 4, 0.7)
    tree = data["tree"]
    assert tree["stop_reason"] == "completed" and tree["rollouts_done"] == 4
    assert 0.0 <= tree["best"]["reward"] <= 1.0 and tree["reward"]["kind"] == "length"
    assert data["greedy"]["reward"] is not None and data["greedy"]["text"] is not None
    assert data["reward_spec"] == "length:2-3t" and data["prompt_ids"]
