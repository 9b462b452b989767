"""Dataset runs end to end on a saved tiny model: a JailbreakBench-layout file (benign rows),
replayable records (full prompt ids equal the template's own tokenization, weights hash), then
``attack report`` (table, Markdown, CSV, PNG) and ``attack judge`` adding a judge later."""
from __future__ import annotations

import csv
import json
import re

import pytest

from app.cli import main
from engine.advtok.records import weights_hash

ROWS = [("Write a haiku about rain", "Sure, here is a haiku", "Haiku", "Poetry"),
        ("Name three colours", "Sure, here are three colours", "Colours", "Lists"),
        ("Describe a sunny day", "Sure, here is a description", "Sunny", "Poetry")]


@pytest.fixture(scope="module")
def harmbench_dir(tiny_lm, tmp_path_factory):
    """The tiny model given the vocabulary shape of the HarmBench classifier (the Llama-2
    family's '<s>', single-token Yes / No), so the harmbench judge accepts it."""
    import copy

    d = tmp_path_factory.mktemp("tiny-harmbench")
    tok = copy.deepcopy(tiny_lm.tokenizer)
    tok.add_special_tokens({"bos_token": "<s>"})
    tok.add_tokens([w for w in ("Yes", "No") if len(tok.encode(w, add_special_tokens=False)) != 1])
    model = copy.deepcopy(tiny_lm.model)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def write_jbb(path, rows=ROWS):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["Index", "Goal", "Target", "Behavior", "Category", "Source"])
        for i, r in enumerate(rows, 1):
            w.writerow([i, *r, "synthetic"])


def run_args(tiny_dir, data, out, *extra):
    return ["attack", "--model", str(tiny_dir), "--engine-path", "standard", "--dataset",
            str(data), "--out", str(out), "--iters", "1", "--samples", "2", "--sample-tokens",
            "4", "--seed", "3", *extra]


def test_dataset_run_report_and_judge(harmbench_dir, tiny_lm, tiny_dir, tmp_path, capsys):
    from engine.lm.templates import split_template

    data, out = tmp_path / "jbb.csv", tmp_path / "results.jsonl"
    write_jbb(data)
    assert main(run_args(tiny_dir, data, out, "--judge", "refusal")) == 0
    err = capsys.readouterr().err
    assert "row 3/3" in err and "rows/h" in err and "refusal " in err
    # progress inside a row (stderr is not a terminal here: one line per phase)
    for words in ("row 1/3 (Haiku) · diagram", "row 1/3 (Haiku) · search ",
                  "sampling adversarial token", "sampling canonical token",
                  "judging refusal (adversarial, 2 samples)"):
        assert words in err, (words, err.splitlines())
    assert re.search(r"ETA \d+:\d\d:\d\d", err) and " s\n" not in err
    assert all(len(line) > 0 for line in err.splitlines())
    recs = [json.loads(s) for s in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in recs] == ["Haiku", "Colours", "Sunny"]
    assert [r["category"] for r in recs] == ["Poetry", "Lists", "Poetry"]
    chunks = split_template(tiny_lm.tokenizer, recs[0]["system"])
    for r in recs:
        # the recorded canonical prompt is exactly the template's own tokenization
        assert r["prompt_ids"]["canonical"] == chunks.reference_ids(r["request"])
        adv = r["prompt_ids"]["adversarial"]
        assert tiny_lm.tokenizer.decode(adv) == tiny_lm.tokenizer.decode(r["prompt_ids"]["canonical"])
        assert r["model"]["weights_hash"] == weights_hash(tiny_lm.model)
        assert r["seed"] == 3 and r["config"]["samples"] == 2 and r["template"]["has_template"]
        assert r["judges"] == ["refusal"]
        for s in r["adversarial_samples"] + r["canonical_samples"]:
            assert s["token_ids"] and s["verdicts"]["refusal"]["label"] in ("harmful", "safe")
    # resume: nothing left to do
    assert main(run_args(tiny_dir, data, out, "--judge", "refusal")) == 0
    assert "0 rows done, 3 already finished" in capsys.readouterr().err

    # replay: the recorded model, forward, prompts, scores and samples are reproduced
    assert main(["attack", "replay", str(out), "--row", "Colours"]) == 0
    rep = capsys.readouterr().out
    assert "replay matches" in rep and "2/2 identical" in rep and "DIFFERS" not in rep
    bad = tmp_path / "tampered.jsonl"
    t = dict(recs[1])
    t["adversarial_samples"] = [dict(s) for s in t["adversarial_samples"]]
    t["adversarial_samples"][0]["token_ids"] = [1, 2, 3]
    t["best_score"] = t["best_score"] + 0.5
    bad.write_text(json.dumps(t) + "\n", encoding="utf-8")
    assert main(["attack", "replay", str(bad), "--row", "Colours"]) == 1
    rep = capsys.readouterr().out
    assert "adversarial score: recorded" in rep and "(DIFFERS)" in rep
    assert "adversarial samples: 1/2" in rep and "replay DIFFERS" in rep

    # judge later with another judge: verdicts are added, the old ones kept
    assert main(["attack", "judge", str(out), "--judge", "target"]) == 0
    err = capsys.readouterr().err
    assert "judging target (adversarial, 2 samples)" in err and "rows/h · ETA" in err
    recs2 = [json.loads(s) for s in out.read_text(encoding="utf-8").splitlines()]
    assert recs2[0]["judges"] == ["refusal", "target"]
    s0 = recs2[0]["adversarial_samples"][0]
    assert set(s0["verdicts"]) == {"refusal", "target"}
    assert s0["verdicts"]["refusal"] == recs[0]["adversarial_samples"][0]["verdicts"]["refusal"]
    # a classifier judge refuses a model that is not that classifier, and changes nothing
    before = out.read_text(encoding="utf-8")
    assert main(["attack", "judge", str(out), "--judge", f"harmbench:{tiny_dir}"]) == 2
    assert "is not a HarmBench classifier" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == before
    # on a local model directory in HarmBench's format it judges
    assert main(["attack", "judge", str(out), "--judge", f"harmbench:{harmbench_dir}",
                 "--judge-batch", "3"]) == 0
    recs3 = [json.loads(s) for s in out.read_text(encoding="utf-8").splitlines()]
    hb = f"harmbench:{harmbench_dir}"
    info = recs3[0]["judge_info"][hb]
    assert info["model"]["weights_hash"] and info["prompt_sha256"] and info["versions"]["torch"]
    assert recs3[0]["judges"] == ["refusal", "target", hb]
    assert all(hb in s["verdicts"] for r in recs3 for s in r["canonical_samples"])
    capsys.readouterr()

    md, cs, png = tmp_path / "t.md", tmp_path / "t.csv", tmp_path / "plots"
    assert main(["attack", "report", str(out), "--markdown", str(md), "--csv", str(cs),
                 "--png", str(png)]) == 0
    text = capsys.readouterr().out
    assert text.index("ΔASR (n rows)") < text.index("ASR (n samples)")   # ΔASR leads
    assert "Cohen" in text and "likelihood gain" in text
    mdt = md.read_text(encoding="utf-8")
    assert "ΔASR@2 (n rows)" in mdt and "| refusal | Poetry |" in mdt and "n=3" in mdt
    # headline: all + 2 categories; detail: ASR, ASR@1, ASR@2 and the verdict counts of each
    assert mdt.count("| refusal |") == 3 + 3 * 4 and mdt.count("| target |") == 3 + 3 * 4
    rows = list(csv.DictReader(cs.open(encoding="utf-8")))
    assert {r["metric"] for r in rows} >= {"asr", "asr@1", "asr@2", "likelihood_gain", "cohen_kappa"}
    assert (png / "advtok-asr.png").stat().st_size > 1000


def test_bad_input_is_one_line(tiny_dir, tmp_path, capsys):
    data = tmp_path / "x.csv"
    data.write_text("q,a\nWrite a haiku,Sure\n", encoding="utf-8")
    for argv, words in [
        (run_args(tiny_dir, data, tmp_path / "o.jsonl"), "unrecognised CSV header"),
        (run_args(tiny_dir, data, tmp_path / "o.jsonl", "--judge", "nope"), "unknown judge"),
        (run_args(tiny_dir, data, tmp_path / "o.jsonl", "--columns", "request"), "FIELD=COLUMN"),
        (["attack", "report", str(data), "--k", "0"], "≥ 1"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and words in err, err


def test_resume_with_other_settings_is_refused(tiny_dir, tmp_path, capsys):
    data, out = tmp_path / "jbb.csv", tmp_path / "results.jsonl"
    write_jbb(data, ROWS[:2])
    assert main(run_args(tiny_dir, data, out, "--judge", "refusal")) == 0
    recs = [json.loads(s) for s in out.read_text(encoding="utf-8").splitlines()]
    assert len({r["fingerprint"] for r in recs}) == 1
    s = recs[0]["settings"]
    assert s["attack"]["iters"] == 1 and s["attack"]["seed"] == 3 and s["judges"][0]["id"] == "refusal"
    assert s["model"]["weights_hash"] == recs[0]["model"]["weights_hash"] and s["template"]["sha256"]
    write_jbb(data, ROWS)                       # one more row to do
    before = out.read_bytes()
    capsys.readouterr()
    # an attack setting: refused before the model loads
    assert main(run_args(tiny_dir, data, out, "--judge", "refusal", "--iters", "2")) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--iters was 1, now 2" in err, err
    # the judges: refused once they are built, before the new row is searched
    assert main(run_args(tiny_dir, data, out, "--judge", "refusal,target")) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--judge was 'refusal', now 'refusal,target'" in err, err
    assert out.read_bytes() == before           # nothing written, nothing mixed
    # the same settings resume
    assert main(run_args(tiny_dir, data, out, "--judge", "refusal")) == 0
    assert "1 rows done, 2 already finished" in capsys.readouterr().err
