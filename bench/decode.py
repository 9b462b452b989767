"""Issue 8 benchmark: the lean forward against HF generate and the standard loop, batched decode,
prefill/scoring, LM-head options, and where a decode step's time goes — all in one run, methods
alternating round by round so background load hits each alike; ratios are within the run.

    .venv/bin/python bench/decode.py [--tokens 48] [--rounds 3] [--threads N] [--pipeline-only]

``--pipeline-only`` measures just the bound, HF ``generate`` against the lean path, and what the
decode pipeline costs over a bare argmax loop (bench/results/decode_pipeline.json).

Every speed is also given as a fraction of the memory-bandwidth bound: this machine's read
bandwidth (a large-array sum, measured in the same run) divided by the bytes a decode step must
read (every weight once per step, plus the KV cache). Batched rows read the weights once for all
rows, so their bound is B times higher. Prints a table; writes bench/results/decode.json.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any

from _util import env_record, median_iqr, write_result

import torch

from engine.lm.fastpath import LeanForward, make_lean_forward
from engine.lm.forward import StandardForward
from engine.lm.generate import generate, generate_batch
from engine.lm.model import load_model
from engine.lm.config import SamplingConfig
from engine.lm.stepprofile import decode_step_profile

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
HEAD_PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "What is the capital of France, and why is it famous?",
    "Explain photosynthesis to a ten-year-old.",
    "List three prime numbers greater than 100.",
    "Translate 'good morning, how are you?' into Spanish and German.",
    "Give me a Python function that reverses a string.",
    "Why is the sky blue? Answer in two sentences.",
    "Summarise the plot of Romeo and Juliet in one paragraph.",
]


def read_bandwidth(mib: int = 256, reps: int = 5) -> dict[str, float]:
    """Read bandwidth in GB/s of a large fp32 sum (the same threads as the model uses)."""
    x = torch.ones(mib * 2**20 // 4)
    x.sum()
    speeds = []
    for _ in range(reps):
        t = time.perf_counter()
        x.sum()
        speeds.append(x.numel() * 4 / (time.perf_counter() - t) / 1e9)
    return {"best_gbs": max(speeds), "median_gbs": sorted(speeds)[len(speeds) // 2]}


def weight_bytes(lean: LeanForward) -> int:
    """Bytes a decode step reads once: every layer weight, the final norm and the LM head
    (tied embeddings: the head is the embedding matrix; the input lookup reads one row)."""
    n = lean.w_head.numel() * lean.w_head.element_size() + lean.norm.numel() * lean.norm.element_size()
    for L in lean.layers:
        for t in (L.ln1, L.ln2, L.wq, L.wk, L.wv, L.bq, L.bk, L.bv, L.wo, L.bo, L.wg, L.wu, L.bg, L.bu, L.wd, L.bd):
            if t is not None:
                n += t.numel() * t.element_size()
    return n


def _use(lm: Any, fwd: Any) -> None:
    """Make ``generate`` run on ``fwd`` (get_forward returns the instance cached on lm)."""
    lm._forward = fwd
    lm._forward_path = lm.engine_path = "fast" if fwd.name == "fast" else "standard"


def _stats(xs: list[float]) -> dict[str, Any]:
    m, q1, q3 = median_iqr(xs)
    return {"median": m, "q1": q1, "q3": q3, "runs": xs}


def decode_batch1(lm: Any, variants: dict[str, Any], tokens: int, rounds: int) -> dict[str, Any]:
    ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                           add_generation_prompt=True, return_dict=False)
    x = torch.tensor([ids])
    cfg = SamplingConfig(max_new_tokens=tokens, temperature=0.0)
    rows: dict[str, list[float]] = {"hf_generate": [], **{k: [] for k in variants}}
    with torch.inference_mode():
        lm.model.generate(x, max_new_tokens=4, do_sample=False)
    for fwd in variants.values():
        _use(lm, fwd)
        generate(lm, ids, SamplingConfig(max_new_tokens=4, temperature=0.0))
    eos, lm.eos_ids = lm.eos_ids, []  # the same token count everywhere
    outs: dict[str, list[int]] = {}
    try:
        for _ in range(rounds):
            t = time.perf_counter()
            with torch.inference_mode():
                out = lm.model.generate(x, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            el = time.perf_counter() - t
            t = time.perf_counter()
            with torch.inference_mode():
                lm.model.generate(x, max_new_tokens=1, do_sample=False)
            pre = time.perf_counter() - t
            rows["hf_generate"].append((out.shape[1] - len(ids) - 1) / max(el - pre, 1e-9))
            for name, fwd in variants.items():
                _use(lm, fwd)
                r, _ = generate(lm, ids, cfg)
                rows[name].append(r.decode_tok_s)
                outs[name] = r.token_ids
    finally:
        lm.eos_ids = eos
    res: dict[str, Any] = {k: _stats(v) for k, v in rows.items()}
    first = next(iter(outs.values()))
    res["all_paths_same_tokens"] = all(v == first for v in outs.values())
    return res


def _bare_loop(fwd: Any, ids: list[int], tokens: int) -> float:
    """The floor: forward + ``argmax`` and nothing else (no pipeline, no stop rules, no text),
    decode tokens/s counted as ``generate`` counts them (after the first token)."""
    cache = fwd.new_cache()
    tok = fwd.logits(torch.tensor([ids]), cache, keep=1)[:, -1].argmax(-1)
    t = time.perf_counter()
    for _ in range(tokens - 1):
        tok = fwd.logits(tok.view(1, 1), cache, keep=1)[:, -1].argmax(-1)
    int(tok)
    return (tokens - 1) / (time.perf_counter() - t)


def pipeline_overhead(lm: Any, fwd: Any, tokens: int, rounds: int) -> dict[str, Any]:
    """What the decode pipeline (engine/lm/sampling.py + stopping.py, inside ``generate``) costs
    on top of the bare forward: a bare argmax loop, ``generate`` greedy, and ``generate`` with
    the default sampling settings (temperature 0.7, top-p 0.95) and a repetition penalty,
    alternating within each round; per-round ratios against the same round's bare loop."""
    ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                           add_generation_prompt=True, return_dict=False)
    _use(lm, fwd)
    variants = {
        "pipeline_greedy": SamplingConfig(max_new_tokens=tokens, temperature=0.0),
        "pipeline_default_sampling": SamplingConfig(max_new_tokens=tokens, seed=0),
        "pipeline_sampling_rep_penalty": SamplingConfig(max_new_tokens=tokens, seed=0,
                                                        repetition_penalty=1.2),
    }
    rows: dict[str, list[float]] = {"bare_argmax": [], **{k: [] for k in variants}}
    ratios: dict[str, list[float]] = {k: [] for k in variants}
    eos, lm.eos_ids = lm.eos_ids, []  # the same token count everywhere
    try:
        _bare_loop(fwd, ids, 4)
        generate(lm, ids, SamplingConfig(max_new_tokens=4, temperature=0.0))
        for r in range(rounds):
            order = list(variants) if r % 2 == 0 else list(variants)[::-1]
            bare = [_bare_loop(fwd, ids, tokens)]
            for name in order:
                res, _ = generate(lm, ids, variants[name])
                rows[name].append(res.decode_tok_s)
            bare.append(_bare_loop(fwd, ids, tokens))  # before and after: drift hits both sides
            b = sum(bare) / 2
            rows["bare_argmax"].append(b)
            for name in variants:
                ratios[name].append(rows[name][-1] / b)
    finally:
        lm.eos_ids = eos
    out: dict[str, Any] = {k: _stats(v) for k, v in rows.items()}
    out["ratio_vs_bare"] = {k: {**_stats(v), "min": min(v), "max": max(v)} for k, v in ratios.items()}
    out["tokens"] = tokens
    return out


def decode_batched(lm: Any, variants: dict[str, Any], sizes: list[int], tokens: int, rounds: int) -> dict[str, Any]:
    ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                           add_generation_prompt=True, return_dict=False)
    cfg = SamplingConfig(max_new_tokens=tokens, temperature=1.0, seed=0)
    rows: dict[str, list[float]] = {f"{k}@{b}": [] for k in variants for b in sizes}
    eos, lm.eos_ids = lm.eos_ids, []
    try:
        for fwd in variants.values():
            _use(lm, fwd)
            generate_batch(lm, ids, 2, SamplingConfig(max_new_tokens=3, temperature=1.0, seed=0))
        for _ in range(rounds):
            for b in sizes:
                for name, fwd in variants.items():
                    _use(lm, fwd)
                    r = generate_batch(lm, ids, b, cfg)
                    rows[f"{name}@{b}"].append(r[0].decode_tok_s)  # total tokens/s over all rows
    finally:
        lm.eos_ids = eos
    return {k: _stats(v) for k, v in rows.items()}


def _score_rows(fwd: Any, prefix: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of every row token after a shared cached prefix (AdvTok-style):
    prefix cache forked and repeated, hidden states, head in chunks, log-softmax, gather."""
    pc = fwd.new_cache()
    fwd.logits(prefix, pc)
    cache = fwd.repeat(fwd.fork(pc), rows.shape[0])
    h = fwd.hidden(rows, cache)
    # position i predicts row token i+1; the prefix's last position predicts token 0 (omitted here)
    h, tgt = h[:, :-1], rows[:, 1:]
    total = torch.zeros(rows.shape[0], dtype=torch.float64)
    step = 8
    for a in range(0, rows.shape[0], step):
        lp = torch.log_softmax(fwd.head(h[a:a + step]), dim=-1)
        total[a:a + step] = lp.gather(-1, tgt[a:a + step, :, None]).squeeze(-1).double().sum(-1)
    return total


def prefill_scoring(lm: Any, variants: dict[str, Any], rounds: int, batch: int = 32, length: int = 64) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    vocab = lm.config.vocab_size
    ids = torch.randint(100, vocab, (batch, length), generator=g)
    prefix = torch.tensor([lm.tokenizer.encode("Score these continuations of the following text:")])
    rows: dict[str, list[float]] = {}
    scores: dict[str, torch.Tensor] = {}
    for name, fwd in variants.items():  # warm-up
        fwd.logits(ids[:2, :8], fwd.new_cache())
    for _ in range(rounds):
        for name, fwd in variants.items():
            t = time.perf_counter()
            fwd.logits(ids, fwd.new_cache(), keep=1)
            rows.setdefault(f"prefill/{name}", []).append(ids.numel() / (time.perf_counter() - t))
            t = time.perf_counter()
            scores[name] = _score_rows(fwd, prefix, ids)
            rows.setdefault(f"scoring/{name}", []).append(ids.numel() / (time.perf_counter() - t))
    res: dict[str, Any] = {k: _stats(v) for k, v in rows.items()}
    names = list(scores)
    res["scores_max_abs_diff"] = max(float((scores[n] - scores[names[0]]).abs().max()) for n in names)
    res["shape"] = [batch, length]
    return res


def head_options(lm: Any, lean: LeanForward, rounds: int) -> dict[str, Any]:
    """The LM head alone: time at decode (1 position) and scoring (512 positions) shapes, plus
    top-1 agreement and KL(fp32 ‖ option) over every position of the benchmark prompts."""
    hs = []
    for p in HEAD_PROMPTS:
        ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                               return_dict=False)
        hs.append(lean.hidden(torch.tensor([ids]), lean.new_cache())[0])
    h_all = torch.cat(hs)
    lean.set_head_mode("exact")
    ref = lean.head(h_all)
    ref_lp = torch.log_softmax(ref, -1)
    one, many = h_all[-1:].clone()[None], h_all[:512][None]
    res: dict[str, Any] = {"positions": int(h_all.shape[0])}
    times: dict[str, dict[str, list[float]]] = {}
    try:
        for mode in ("exact", "chunked", "int8"):
            lean.set_head_mode(mode)
            lean.head(one)
        for _ in range(rounds):
            for mode in ("exact", "chunked", "int8"):
                lean.set_head_mode(mode)
                for shape, x, reps in (("decode_ms", one, 10), ("scoring512_ms", many, 2)):
                    t = time.perf_counter()
                    for _ in range(reps):
                        lean.head(x)
                    times.setdefault(mode, {}).setdefault(shape, []).append((time.perf_counter() - t) / reps * 1e3)
        for mode in ("exact", "chunked", "int8"):
            lean.set_head_mode(mode)
            out = lean.head(h_all)
            lp = torch.log_softmax(out, -1)
            kl = (ref_lp.exp() * (ref_lp - lp)).sum(-1)
            res[mode] = {k: _stats(v) for k, v in times[mode].items()}
            res[mode].update(top1_agreement=float((out.argmax(-1) == ref.argmax(-1)).float().mean()),
                             kl_mean=float(kl.mean()), kl_max=float(kl.max()),
                             max_abs_logit_diff=float((out - ref).abs().max()),
                             exact=bool((out - ref).abs().max() <= 1e-4))
    finally:
        lean.set_head_mode("exact")
    ok = [m for m in ("exact", "chunked", "int8")
          if res[m]["top1_agreement"] == 1.0 and res[m]["kl_max"] < 1e-3]
    res["fastest_meeting_rules_decode"] = min(ok, key=lambda m: res[m]["decode_ms"]["median"])
    res["kept_default"] = "exact"
    return res


def bandwidth_bound(lean: Any, tokens: int, wb: int, bw0: dict[str, float],
                    out: dict[str, Any]) -> float:
    """Batch-1 tok/s if a step only read the weights and the KV cache at the best read bandwidth
    measured before and after the run (recorded in ``out["bandwidth"]``)."""
    bw1 = read_bandwidth()
    bw = max(bw0["best_gbs"], bw1["best_gbs"])
    out["bandwidth"] = {"start": bw0, "end": bw1, "used_gbs": bw}
    ctx = 64 + tokens
    kv = 2 * lean.n_layers * lean.n_kv * lean.head_dim * 4 * ctx
    return bw * 1e9 / (wb + kv)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--pipeline-only", action="store_true",
                    help="only the bandwidth bound, HF generate vs lean and the pipeline's cost "
                         "(writes bench/results/decode_pipeline.json)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    lm = load_model("default")
    out: dict[str, Any] = {"env": env_record(), "model": lm.name, "dtype": lm.dtype,
                           "args": vars(a)}
    std = StandardForward(lm.model)
    lean = make_lean_forward(lm.model)
    assert lean is not None, "the bundled model must be supported by the lean path"
    if a.pipeline_only:
        bw0 = read_bandwidth()
        return pipeline_main(lm, lean, a, out, bw0, weight_bytes(lean))
    fused = make_lean_forward(lm.model, fuse=True)  # concatenated copies (the default adopts)
    separate = make_lean_forward(lm.model, fuse=False)
    mm = make_lean_forward(lm.model, decode_attention="matmul")
    plain = make_lean_forward(lm.model, matvec="linear")
    bw0 = read_bandwidth()
    wb = weight_bytes(lean)
    out["weights_read_per_step_bytes"] = wb
    out["fused_extra_weight_bytes"] = fused.extra_weight_bytes

    print("batch-1 decode …", flush=True)
    out["decode_b1"] = decode_batch1(lm, {"standard_loop": std, "lean": lean, "lean_fused_copies": fused,
                                          "lean_separate_projections": separate,
                                          "lean_matmul_decode": mm, "lean_linear_matvec": plain}, a.tokens, a.rounds)
    print("batched decode …", flush=True)
    out["decode_batched"] = decode_batched(lm, {"lean": lean, "standard": std}, [1, 4, 16],
                                           max(8, a.tokens // 2), max(1, a.rounds - 1))
    print("pipeline vs bare argmax …", flush=True)
    out["pipeline"] = pipeline_overhead(lm, lean, a.tokens, max(a.rounds, 5))
    print("prefill / scoring …", flush=True)
    out["prefill_scoring"] = prefill_scoring(lm, {"standard": std, "lean": lean}, a.rounds)
    print("LM head options …", flush=True)
    out["head"] = head_options(lm, lean, a.rounds)
    print("step profiles …", flush=True)
    _use(lm, lean)
    lm._forward = None
    out["profile_standard"] = decode_step_profile(lm, "standard").to_dict()
    lm._forward = None
    out["profile_lean"] = decode_step_profile(lm, "fast").to_dict()
    lm._forward = None
    bound = bandwidth_bound(lean, a.tokens, wb, bw0, out)
    bw = out["bandwidth"]["used_gbs"]
    out["bound_tok_s_batch1"] = bound
    # every figure as a fraction of its bound (batched rows read the weights once for B rows)
    out["fraction_of_bound"] = {
        **{f"decode_b1/{k}": v["median"] / bound for k, v in out["decode_b1"].items() if isinstance(v, dict)},
        **{f"decode_batched/{k}": v["median"] / (int(k.split("@")[1]) * bound)
           for k, v in out["decode_batched"].items() if isinstance(v, dict) and "@" in k},
        **{f"prefill_scoring/{k}": v["median"] / (out["prefill_scoring"]["shape"][0] * bound)
           for k, v in out["prefill_scoring"].items() if isinstance(v, dict) and "median" in v},
    }

    d, bt, ps = out["decode_b1"], out["decode_batched"], out["prefill_scoring"]
    med = lambda r: r["median"]  # noqa: E731
    goals = {
        "lean_vs_hf_generate": med(d["lean"]) / med(d["hf_generate"]),
        "lean_fraction_of_bound": med(d["lean"]) / bound,
        "batched16_vs_batch1": med(bt["lean@16"]) / med(bt["lean@1"]),
        "scoring_lean_vs_standard": med(ps["scoring/lean"]) / med(ps["scoring/standard"]),
        "prefill_lean_vs_standard": med(ps["prefill/lean"]) / med(ps["prefill/standard"]),
    }
    targets = {"lean_vs_hf_generate": 2.0, "lean_fraction_of_bound": 0.5, "batched16_vs_batch1": 5.0,
               "scoring_lean_vs_standard": 1.3}
    out["goals"] = {k: {"value": v, "target": targets.get(k), "met": (v >= targets[k]) if k in targets else None}
                    for k, v in goals.items()}
    out["env"]["loadavg_end"] = list(os.getloadavg())
    path = write_result("decode", out)

    print(f"\nmodel {lm.name} {lm.dtype} · torch threads {torch.get_num_threads()} · load avg "
          f"{out['env']['loadavg'][0]:.1f} → {out['env']['loadavg_end'][0]:.1f} (shared cores: timings are noisy)")
    print(f"read bandwidth {bw:.1f} GB/s (best of start/end) · weights read per step {wb / 1e6:.0f} MB "
          f"→ batch-1 bound {bound:.1f} tok/s")
    print(f"\n{'batch-1 greedy decode':28s} {'tok/s median [IQR]':>22s}  vs HF   of bound")
    for k in ("hf_generate", "standard_loop", "lean", "lean_linear_matvec", "lean_separate_projections",
              "lean_fused_copies", "lean_matmul_decode"):
        m = d[k]
        print(f"  {k:26s} {m['median']:7.1f} [{m['q1']:.1f}–{m['q3']:.1f}]  {m['median'] / med(d['hf_generate']):5.2f}×"
              f"  {m['median'] / bound:6.1%}")
    print(f"  same greedy tokens on every path: {d['all_paths_same_tokens']} · default: {lean.describe()}; "
          f"fused copies would cost {fused.extra_weight_bytes / 2**20:.0f} MiB extra")
    print(f"\n{'batched decode (total tok/s)':28s} {'lean':>10s} {'standard':>10s}  lean of B×bound")
    for b in (1, 4, 16):
        m, s = bt[f"lean@{b}"], bt[f"standard@{b}"]
        print(f"  batch {b:<20d} {m['median']:10.1f} {s['median']:10.1f}  {m['median'] / (b * bound):6.1%}")
    print(f"\nprefill / scoring, batch {ps['shape'][0]} × {ps['shape'][1]} tokens (tokens/s)")
    for kind in ("prefill", "scoring"):
        s, l_ = ps[f"{kind}/standard"], ps[f"{kind}/lean"]
        print(f"  {kind:26s} standard {s['median']:8.0f}   lean {l_['median']:8.0f}   {l_['median'] / s['median']:.2f}×"
              f"   lean of bound {l_['median'] / (ps['shape'][0] * bound):.1%} (compute-bound: the bound is loose)")
    print(f"  score sums agree to {ps['scores_max_abs_diff']:.2e} (sum of 63 log-probs)")
    h = out["head"]
    print(f"\nLM head alone ({h['positions']} prompt positions for agreement)")
    for mode in ("exact", "chunked", "int8"):
        r = h[mode]
        print(f"  {mode:8s} decode {r['decode_ms']['median']:6.2f} ms  512 pos {r['scoring512_ms']['median']:7.1f} ms"
              f"  top-1 {r['top1_agreement']:.2%}  KL mean {r['kl_mean']:.1e} max {r['kl_max']:.1e}")
    print(f"  fastest meeting top-1 100 % and KL < 1e-3: {h['fastest_meeting_rules_decode']} · default kept: exact")
    for name in ("profile_standard", "profile_lean"):
        p = out[name]
        print(f"\n{name.replace('_', ' ')} decode step (profiled, ctx {p['context']}): {p['step_ms']:.1f} ms "
              f"(unprofiled {p['unprofiled_step_ms']:.1f}) = layer matmuls {p['layer_matmul_ms']:.1f} + head "
              f"{p['head_ms']:.1f} + attention {p['attention_ms']:.1f} + rest {p['rest_ms']:.1f}")
    print("\ngoals:")
    for k, g in out["goals"].items():
        t = f"target ≥ {g['target']}" if g["target"] else ""
        flag = "" if g["met"] is None else ("met" if g["met"] else "NOT met")
        print(f"  {k:28s} {g['value']:6.2f}  {t:14s} {flag}")
    p = out["pipeline"]
    print_pipeline(p)
    print(f"\nwrote {path}")


def print_pipeline(p: dict[str, Any]) -> None:
    print(f"\ndecode pipeline on the lean path ({p['tokens']} tokens; tok/s median, ratio to the same "
          f"round's bare argmax loop: median [min–max])")
    print(f"  {'bare_argmax':30s} {p['bare_argmax']['median']:7.1f}")
    for k, r in p["ratio_vs_bare"].items():
        print(f"  {k:30s} {p[k]['median']:7.1f}   {r['median']:.3f} [{r['min']:.3f}–{r['max']:.3f}]")


def pipeline_main(lm: Any, lean: Any, a: Any, out: dict[str, Any], bw0: dict[str, float],
                  wb: int) -> None:
    """--pipeline-only: the figures for the decode pipeline's cost, on a loaded machine quickly."""
    print("batch-1 decode (HF generate vs lean) …", flush=True)
    out["decode_b1"] = decode_batch1(lm, {"lean": lean}, a.tokens, a.rounds)
    print("pipeline vs bare argmax …", flush=True)
    out["pipeline"] = pipeline_overhead(lm, lean, a.tokens, max(a.rounds, 5))
    bound = bandwidth_bound(lean, a.tokens, wb, bw0, out)
    bw = out["bandwidth"]["used_gbs"]
    d = out["decode_b1"]
    out["bound_tok_s_batch1"] = bound
    out["lean_vs_hf_generate"] = d["lean"]["median"] / d["hf_generate"]["median"]
    out["lean_fraction_of_bound"] = d["lean"]["median"] / bound
    out["bare_fraction_of_bound"] = out["pipeline"]["bare_argmax"]["median"] / bound
    out["env"]["loadavg_end"] = list(os.getloadavg())
    path = write_result("decode_pipeline", out)
    print(f"\nmodel {lm.name} {lm.dtype} · torch threads {torch.get_num_threads()} · load avg "
          f"{out['env']['loadavg'][0]:.1f} → {out['env']['loadavg_end'][0]:.1f} (shared cores: timings are noisy)")
    print(f"read bandwidth {bw:.1f} GB/s (best of start/end) · weights read per step {wb / 1e6:.0f} MB "
          f"→ batch-1 bound {bound:.1f} tok/s")
    print(f"  HF generate {d['hf_generate']['median']:.1f} tok/s · lean (generate, greedy) "
          f"{d['lean']['median']:.1f} tok/s = {out['lean_vs_hf_generate']:.2f}× generate, "
          f"{out['lean_fraction_of_bound']:.1%} of the bound (bare argmax loop "
          f"{out['bare_fraction_of_bound']:.1%})")
    print_pipeline(out["pipeline"])
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
