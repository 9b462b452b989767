"""Foundation benchmark (issue 3): the manual KV-cache loop vs HF generate, conversation caching
vs re-encoding history, cold vs warm model load, and where a decode step's time goes.

    .venv/bin/python bench/generation.py [--tokens 64] [--rounds 3] [--skip-cold]

Prints a table and writes bench/results/generation.json. Runs alternate between methods so
background load hits both alike; ratios are computed within the same run.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from _util import ROOT, env_record, median_iqr, write_result

import torch

from engine.lm.chat import ChatSession
from engine.lm.generate import generate
from engine.lm.model import load_model
from engine.lm.config import SamplingConfig
from engine.lm.stepprofile import decode_step_profile

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
TURNS = ["Hi! Who are you?", "Tell me a fact about the ocean.", "Why is the sky blue?",
         "Give me a synonym for happy.", "What is 12 times 12?", "Summarise our chat in one line."]


def decode_speed(lm, tokens: int, rounds: int) -> dict:
    tok = lm.tokenizer
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                  return_dict=False)
    cfg = SamplingConfig(max_new_tokens=tokens, temperature=0.0)
    x = torch.tensor([ids])
    rows: dict[str, list[float]] = {"hf_generate": [], "loop_standard": [], "loop_fast": []}
    # warm-up both
    lm.model.generate(x, max_new_tokens=4, do_sample=False)
    generate(lm, ids, SamplingConfig(max_new_tokens=4, temperature=0.0))
    eos_saved, lm.eos_ids = lm.eos_ids, []  # same token count on every side: EOS ignored
    for _ in range(rounds):
        # HF generate: time to produce `tokens` new tokens after the prompt, EOS ignored
        t = time.perf_counter()
        with torch.inference_mode():
            out = lm.model.generate(x, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        el = time.perf_counter() - t
        n = out.shape[1] - len(ids)
        # tok/s over the decode part: subtract a separately measured prefill (TTFT)
        t = time.perf_counter()
        with torch.inference_mode():
            lm.model.generate(x, max_new_tokens=1, do_sample=False)
        pre = time.perf_counter() - t
        rows["hf_generate"].append((n - 1) / max(el - pre, 1e-9))
        for path in ("standard", "fast"):
            lm.engine_path = path
            r, _ = generate(lm, ids, cfg)
            assert r.new_tokens == tokens
            rows[f"loop_{path}"].append(r.decode_tok_s)
        lm.engine_path = "fast"
    lm.eos_ids = eos_saved
    from engine.lm.forward import get_forward

    res = {k: dict(zip(("median", "q1", "q3"), median_iqr(v))) for k, v in rows.items()}
    res["fast_forward_impl"] = get_forward(lm).name
    res["ratio_loop_standard_vs_generate"] = res["loop_standard"]["median"] / res["hf_generate"]["median"]
    res["ratio_loop_fast_vs_generate"] = res["loop_fast"]["median"] / res["hf_generate"]["median"]
    return res


def conversation_ttft(lm) -> dict:
    cfg = SamplingConfig(max_new_tokens=24, temperature=0.0)
    s = ChatSession(lm, system="You are a helpful assistant.", sampling=cfg)
    cached, rencoded, prefill_cached, prefill_full = [], [], [], []
    for i, msg in enumerate(TURNS):
        r = s.send(msg)
        cached.append(r.ttft_s)
        prefill_cached.append(r.prefill_tokens)
        # baseline: re-encode the whole history from scratch for the same turn
        msgs = s.messages[:-1]
        ids = lm.tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False)
        rb, _ = generate(lm, ids, cfg)
        rencoded.append(rb.ttft_s)
        prefill_full.append(len(ids))
    return {"turn_ttft_cached_s": cached, "turn_ttft_reencode_s": rencoded,
            "prefill_tokens_cached": prefill_cached, "prefill_tokens_reencode": prefill_full,
            "turn6_over_turn1_cached": cached[-1] / cached[0],
            "turn6_over_turn1_reencode": rencoded[-1] / rencoded[0]}


def load_times() -> dict:
    """Cold = GGUF de-quantized into an empty cache (a subprocess); warm = from cache/."""
    code = ("import time,sys; sys.path.insert(0, %r); from engine.lm.model import load_model; "
            "t=time.perf_counter(); lm=load_model('default'); print(time.perf_counter()-t)" % str(ROOT))
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, TOKENFORGE_CACHE=d)
        cold = float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                    text=True, check=True).stdout.strip().splitlines()[-1])
    warm = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.strip().splitlines()[-1])
    return {"cold_gguf_s": cold, "warm_cache_s": warm, "ratio": cold / warm}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-cold", action="store_true")
    a = ap.parse_args()
    lm = load_model("default")
    out = {"env": env_record(), "model": lm.name, "dtype": lm.dtype}
    out["decode"] = decode_speed(lm, a.tokens, a.rounds)
    out["step_profile_standard"] = decode_step_profile(lm, "standard").to_dict()
    out["step_profile_fast"] = decode_step_profile(lm, "fast").to_dict()
    out["conversation"] = conversation_ttft(lm)
    if not a.skip_cold:
        out["load"] = load_times()
    out["env"]["loadavg_end"] = list(os.getloadavg())
    path = write_result("generation", out)
    d = out["decode"]
    print(f"\nmodel {lm.name} {lm.dtype} · torch threads {out['env']['torch_threads']} · "
          f"load avg {out['env']['loadavg'][0]:.1f} → {out['env']['loadavg_end'][0]:.1f}")
    print(f"{'decode, batch 1, greedy':34s} {'tok/s median [IQR]':>24s}  vs generate")
    for k in ("hf_generate", "loop_standard", "loop_fast"):
        m = d[k]
        print(f"  {k:32s} {m['median']:8.1f} [{m['q1']:.1f}–{m['q3']:.1f}]"
              f"  {m['median'] / d['hf_generate']['median']:.2f}×")
    print(f"  (fast path implementation: {d['fast_forward_impl']})")
    for name in ("standard", "fast"):
        sp = out[f"step_profile_{name}"]
        if sp.get("native_step_ms"):  # the compiled batch-1 step: one call the profiler cannot split
            print(f"{name} decode step (profiled): {sp['step_ms']:.1f} ms = compiled step (layers"
                  f"{' and head' if not sp['head_ms'] else ''}) {sp['native_step_ms']:.1f} ms + head "
                  f"{sp['head_ms']:.1f} + rest {sp['rest_ms']:.1f} ms")
            continue
        print(f"{name} decode step (profiled): {sp['step_ms']:.1f} ms = matmuls {sp['matmul_ms']:.1f} ms "
              f"({sp['matmul_share']:.0%}: layers {sp['layer_matmul_ms']:.1f} + head {sp['head_ms']:.1f}) "
              f"+ attention {sp['attention_ms']:.1f} + rest {sp['rest_ms']:.1f} ms")
    c = out["conversation"]
    print("TTFT per turn (s), cached conversation:", " ".join(f"{x:.3f}" for x in c["turn_ttft_cached_s"]))
    print("TTFT per turn (s), re-encode history: ", " ".join(f"{x:.3f}" for x in c["turn_ttft_reencode_s"]))
    print("prefill tokens cached:", c["prefill_tokens_cached"], " re-encode:", c["prefill_tokens_reencode"])
    print(f"turn 6 / turn 1 TTFT: cached {c['turn6_over_turn1_cached']:.2f}×, re-encode "
          f"{c['turn6_over_turn1_reencode']:.2f}×")
    if "load" in out:
        L = out["load"]
        print(f"model load: cold (GGUF de-quantize) {L['cold_gguf_s']:.1f} s, warm (cache/) "
              f"{L['warm_cache_s']:.1f} s ({L['ratio']:.1f}×)")
    print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
