"""``tokenforge tokenize`` end to end on the bundled tokenizer (loaded without the weights)."""
from __future__ import annotations

import json

import pytest

from app.cli import main
from engine.advtok.mdd import MDD
from engine.advtok.vocab import build_vocab


def test_json_report_files_and_determinism(tmp_path, capsys, tokenizer):
    out_json, out_dot = tmp_path / "r.json", tmp_path / "d.dot"
    args = ["tokenize", "penguin", "--sample", "5", "--neighbours", "3", "--seed", "3"]
    assert main(args + ["--out", str(out_json), "--dot", str(out_dot)]) == 0
    rep = json.loads(out_json.read_text(encoding="utf-8"))
    assert rep["count"] == "36" and rep["text"] == "penguin"
    assert rep["canonical"]["ids"] == tokenizer.encode("penguin", add_special_tokens=False)
    assert "".join(rep["canonical"]["tokens"]) == "penguin"
    m = MDD(build_vocab(tokenizer), "penguin")
    assert len(rep["samples"]) == 5
    for s in rep["samples"]:
        assert m.contains(s["ids"]) and "".join(s["tokens"]) == "penguin"
    assert rep["neighbours_total"] == "7" and not rep["neighbours_sampled"]
    assert [n["ids"] for n in rep["neighbours"]] == m.neighbours(rep["canonical"]["ids"], 3)
    dot = out_dot.read_text(encoding="utf-8")
    assert dot.startswith("digraph") and dot.count(" -> ") == 18
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.dot", "r.json"]  # no temp files
    capsys.readouterr()
    # same seed, same samples — now printed to stdout
    assert main(args + ["--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again == rep


def test_text_output_and_count(capsys):
    assert main(["tokenize", "Compose an email", "--sample", "2", "--neighbours", "2"]) == 0
    out = capsys.readouterr().out
    assert "│Com│pose│ an│ email│" in out          # boundaries visible without colour
    assert "tokenizations 4,992" in out
    assert "neighbours at distance 2: 11 (all 11)" in out
    assert main(["tokenize", "The quick brown fox jumps over the lazy dog.", "--count"]) == 0
    assert capsys.readouterr().out.strip() == "8682209280"


@pytest.mark.parametrize("argv,msg", [
    (["tokenize", ""], "empty text"),
    (["tokenize", "hi", "--sample", "-1"], "--sample"),
    (["tokenize", "hi", "--neighbours", "-2"], "--neighbours"),
    (["tokenize", "hi", "--model", "/no/such/model"], "unknown model"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, msg):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err
    assert err.count("error:") == 1 and len(err.strip().splitlines()) == 1, err


def test_corrupt_vocab_cache_is_reported_and_rebuilt(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TOKENFORGE_CACHE", str(tmp_path))
    assert main(["tokenize", "penguin", "--count"]) == 0
    (cached,) = list((tmp_path / "vocab").glob("*.json"))
    good = cached.read_text(encoding="utf-8")
    cached.write_text(good[: len(good) // 3], encoding="utf-8")  # a crash mid-write elsewhere
    capsys.readouterr()
    assert main(["tokenize", "penguin", "--count"]) == 0
    cap = capsys.readouterr()
    assert cap.out.strip() == "36"
    assert "warning:" in cap.err and cached.name in cap.err and "rebuilt" in cap.err
    assert cached.read_text(encoding="utf-8") == good


def test_unwritable_output_is_reported(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["tokenize", "hi", "--out", str(blocker / "out.json")]) == 2
    err = capsys.readouterr().err
    # refused by the validation layer before any work (the folder is a file)
    assert "is not a folder" in err and not (blocker / "out.json").exists()


def test_inspect_text_samples_a_large_ring(tokenizer):
    from engine.errors import InputError
    from engine.advtok.tokenview import inspect_text

    vb = build_vocab(tokenizer)
    seen = []
    text = "The quick brown fox jumps over the lazy dog."
    rep, m = inspect_text(tokenizer, text, samples=3, neighbours=4, limit=25, seed=1, vocab=vb,
                          progress=seen.append)
    assert rep.neighbours_total == 407 and rep.neighbours_sampled
    assert len(rep.neighbours) == 25 == len({tuple(v) for v in rep.neighbours})
    x = set(m.edge_set(rep.canonical))
    for v in rep.neighbours:
        assert len(m.edge_set(v) - x) == 4
    last = seen[-1]
    assert last.phase == "mdd" and last.metrics["canonical_is_path"]
    assert last.metrics["count"] == "8682209280" and last.metrics["canonical_len"] == 10
    for bad in [dict(samples=-1), dict(neighbours=99), dict(limit=0)]:
        with pytest.raises(InputError):
            inspect_text(tokenizer, text, vocab=vb, **bad)
    with pytest.raises(InputError):
        inspect_text(tokenizer, "", vocab=vb)
