"""`tokenforge inspect` and `tokenforge chat --json`: per-token facts that agree with an uncached
forward of the same ids; bad input is one line + exit 2."""
from __future__ import annotations

import json

import pytest
import torch

from app.cli import main


@pytest.mark.parametrize("argv, msg", [
    (["--prompt", "  "], "--prompt is empty"),
    (["--prompt", "hi", "--top-k", "-1"], "--top-k"),
    (["--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens"),
])
def test_bad_input_exits_2_with_one_line(argv, msg, capsys):
    assert main(["inspect", *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("error:") == 1


def _uncached(lm, ids):
    from engine.lm.forward import StandardForward

    std = StandardForward(lm.model)
    return torch.log_softmax(std.logits(torch.tensor([ids]), std.new_cache(), keep=0)[0], -1)


def test_inspect_json_scores_prompt_and_response(tiny_lm, tiny_dir, capsys):
    lm, d = tiny_lm, tiny_dir
    rc = main(["inspect", "--model", str(d), "--engine-path", "standard", "--prompt",
               "Name a colour.", "--response", "Blue, like the sea.", "--top-k", "3",
               "--logit-lens", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    toks = data["tokens"]
    ids = [t["id"] for t in toks]
    lp = _uncached(lm, ids)
    answer = [t for t in toks if t["part"] == "answer"]
    assert lm.tokenizer.decode([t["id"] for t in answer]) == "Blue, like the sea."
    assert any(t["part"] == "user" for t in toks) and toks[0]["surprisal_bits"] is None
    for t in toks[1:]:
        assert abs(t["logprob"] - float(lp[t["index"] - 1, t["id"]])) < 1e-4
        assert len(t["alternatives"]) == 3
    lens = data["logit_lens"]
    assert sorted(int(k) for k in lens) == [t["index"] for t in answer]
    for t in answer:
        rows = lens[str(t["index"])]
        assert len(rows) == lm.model.config.num_hidden_layers
        assert rows[-1]["top"][0]["id"] == t["alternatives"][0]["id"]  # last layer = the output


def test_inspect_table_generates_an_answer(tiny_dir, capsys):
    d = tiny_dir
    rc = main(["inspect", "--model", str(d), "--engine-path", "standard", "--prompt", "Hello",
               "--max-new-tokens", "5", "--logit-lens"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "surprisal bits" in out and "generated, greedy" in out and "logit lens" in out


def test_chat_json_has_per_token_logprobs(tiny_lm, tiny_dir, capsys):
    lm, d = tiny_lm, tiny_dir
    rc = main(["chat", "--model", str(d), "--engine-path", "fast", "--prompt", "Hi there",
               "--temperature", "0", "--max-new-tokens", "8", "--alternatives", "4", "--json"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    toks = data["tokens"]
    assert [t["id"] for t in toks] == data["token_ids"] and len(toks) > 0
    from engine.lm.inspection import context_ids

    ctx, _ = context_ids(lm, "Hi there")  # the same template the chat session uses
    lp = _uncached(lm, ctx + data["token_ids"])
    for j, t in enumerate(toks):
        assert abs(t["logprob"] - float(lp[len(ctx) + j - 1, t["id"]])) < 1e-4
        assert len(t["alternatives"]) == 4 and t["rank"] == 1
