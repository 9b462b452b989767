"""Decode speed on CPU: the lean forward against HF ``generate`` and the bandwidth bound, what the
decode pipeline costs, batched decode, prefill/scoring, LM-head options, and where a decode
step's time goes — all in one run.

    .venv/bin/python bench/decode.py --pipeline-only [--tokens 48] [--rounds 7] [--threads N]
    .venv/bin/python bench/decode.py [--tokens 48] [--rounds 3] [--threads N]   # everything

``--pipeline-only`` is the headline measurement (bench/results/decode_pipeline.json): the three
figures that state the decode path's speed, from one run — lean vs ``generate``, the fraction of
the memory-bandwidth bound, and the pipeline on vs off (``generate`` against a bare forward +
argmax loop on the same forward) — plus the lean path with its batch-1 step in torch ops instead
of the compiled kernel (``lean_torch_step``) and the lean step's profile (ms split, aten ops per
step).
The full run adds the other variants and sections (bench/results/decode.json).

Built for a shared, noisy machine. Every method runs once per round, in alternating order
(forward in even rounds, reversed in odd ones: ABBA), so drift and background load hit each
alike; each ratio is taken within a round and reported as the median over rounds with its
range. Each round also measures the read bandwidth, so the bound of a round is that round's
own. Per method: decode tok/s, wall ms per step and process CPU ms per step (all threads; on an
idle machine about threads × wall when the threads spin, and it shows when the process was
waiting for a core instead), timed from the first to the last new token (prefill excluded).
The load average is printed at the start, per round and at the end.

The bound: the read bandwidth (a 256 MiB fp32 sum, same threads as the model, best of 3)
divided by the bytes a batch-1 step must read (every weight once, plus the KV cache). Batched
rows read the weights once for all rows, so their bound is B times higher.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable

from _util import env_record, median_iqr, write_result

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

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


def read_bandwidth(mib: int = 256, reps: int = 3) -> float:
    """Read bandwidth in GB/s of a large fp32 sum (the same threads as the model uses), best of
    ``reps`` (a slower reading is another process's traffic, not the machine's)."""
    x = torch.ones(mib * 2**20 // 4)
    x.sum()
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        x.sum()
        best = max(best, x.numel() * 4 / (time.perf_counter() - t) / 1e9)
    return best


def weight_bytes(lean: LeanForward) -> int:
    """Bytes a decode step reads once: every layer weight, the final norm and the LM head
    (tied embeddings: the head is the embedding matrix; the input lookup reads one row)."""
    n = lean.w_head.numel() * lean.w_head.element_size() + lean.norm.numel() * lean.norm.element_size()
    for L in lean.layers:
        for t in (L.ln1, L.ln2, L.wq, L.wk, L.wv, L.bq, L.bk, L.bv, L.wo, L.bo, L.wg, L.wu, L.bg, L.bu, L.wd, L.bd):
            if t is not None:
                n += t.numel() * t.element_size()
    return n


def step_bytes(lean: LeanForward, wb: int, tokens: int, prompt: int) -> int:
    """Weights plus the KV cache a batch-1 step reads, at the run's mean context."""
    ctx = prompt + tokens // 2
    return wb + 2 * lean.n_layers * lean.n_kv * lean.head_dim * 4 * ctx


def _use(lm: Any, fwd: Any) -> None:
    """Make ``generate`` run on ``fwd`` (get_forward returns the instance cached on lm)."""
    lm._forward = fwd
    lm._forward_path = lm.engine_path = "fast" if fwd.name == "fast" else "standard"


def _stats(xs: list[float]) -> dict[str, Any]:
    m, q1, q3 = median_iqr(xs)
    return {"median": m, "q1": q1, "q3": q3, "min": min(xs), "max": max(xs), "runs": xs}


def _span(r: dict[str, Any], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(r['median'])} [{fmt.format(r['min'])}–{fmt.format(r['max'])}]"


class Clock:
    """Wall and process CPU time at each new token; a decode run's figures from the first to
    the last (prefill excluded, as ``GenerationResult.decode_tok_s`` counts)."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def mark(self, *_: Any) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))

    def result(self, tokens: list[int]) -> dict[str, Any]:
        (w0, c0), (w1, c1) = self.marks[0], self.marks[-1]
        n = len(self.marks) - 1
        return {"tok_s": n / max(w1 - w0, 1e-9), "wall_ms": 1e3 * (w1 - w0) / n,
                "cpu_ms": 1e3 * (c1 - c0) / n, "tokens": tokens}


class ClockCriterion(StoppingCriteria):
    """A stopping criterion for HF ``generate`` that never stops, only marks each token."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def __call__(self, input_ids: torch.Tensor, scores: Any, **_: Any) -> torch.Tensor:
        self.clock.mark()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def hf_generate_run(lm: Any, ids: list[int], tokens: int) -> dict[str, Any]:
    """HF ``generate``, greedy, exactly ``tokens`` new tokens."""
    clock = Clock()
    with torch.inference_mode():
        out = lm.model.generate(torch.tensor([ids]), max_new_tokens=tokens, min_new_tokens=tokens,
                                do_sample=False, stopping_criteria=StoppingCriteriaList([ClockCriterion(clock)]))
    return clock.result(out[0, len(ids):].tolist())


def generate_run(lm: Any, fwd: Any, ids: list[int], cfg: SamplingConfig) -> dict[str, Any]:
    """engine.lm.generate on ``fwd``: the forward plus the decode pipeline (logits pipeline,
    stop criteria, text) — the path chat and every other command take."""
    _use(lm, fwd)
    clock = Clock()
    res, _ = generate(lm, ids, cfg, observe=clock.mark)
    return clock.result(res.token_ids)


def bare_run(fwd: Any, ids: list[int], tokens: int) -> dict[str, Any]:
    """The floor for a pipeline: the same forward with ``argmax`` and nothing else (no logits
    pipeline, no stop rules, no text)."""
    clock = Clock()
    out = []
    with torch.inference_mode():
        cache = fwd.new_cache()
        tok = fwd.logits(torch.tensor([ids]), cache, keep=1)[:, -1].argmax(-1)
        out.append(int(tok))
        clock.mark()
        for _ in range(tokens - 1):
            tok = fwd.logits(tok.view(1, 1), cache, keep=1)[:, -1].argmax(-1)
            out.append(int(tok))
            clock.mark()
    return clock.result(out)


def decode_rounds(lm: Any, methods: dict[str, Callable[[], dict[str, Any]]], rounds: int,
                  *, bandwidth: bool = True) -> dict[str, Any]:
    """Each method once per round, in alternating order (ABBA); the read bandwidth and the load
    average at the start of each round. Returns per-method runs and per-round records."""
    for fn in methods.values():  # warm-up (first-call allocations, thread pool start)
        fn()
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in methods}
    per_round = []
    for r in range(rounds):
        rec = {"loadavg": os.getloadavg()[0]}
        if bandwidth:
            rec["bandwidth_gbs"] = read_bandwidth()
        order = list(methods) if r % 2 == 0 else list(methods)[::-1]
        for name in order:
            runs[name].append(methods[name]())
        per_round.append(rec)
        print(f"  round {r + 1}/{rounds}: load {rec['loadavg']:.1f}"
              + (f", bandwidth {rec['bandwidth_gbs']:.1f} GB/s" if bandwidth else "") + " · "
              + ", ".join(f"{k} {runs[k][-1]['tok_s']:.1f}" for k in methods), flush=True)
    out: dict[str, Any] = {"rounds": per_round}
    for k, rs in runs.items():
        out[k] = {f: _stats([x[f] for x in rs]) for f in ("tok_s", "wall_ms", "cpu_ms")}
        out[k]["same_tokens_every_round"] = all(x["tokens"] == rs[0]["tokens"] for x in rs)
        out[k]["tokens"] = rs[0]["tokens"]
        out[k]["_runs"] = rs
    return out


def ratio(res: dict[str, Any], a: str, b: str) -> dict[str, Any]:
    """tok/s of ``a`` over ``b`` within each round."""
    return _stats([x["tok_s"] / y["tok_s"] for x, y in zip(res[a]["_runs"], res[b]["_runs"])])


def fraction_of_bound(res: dict[str, Any], name: str, nbytes: int) -> dict[str, Any]:
    """tok/s of ``name`` over each round's own bound (that round's bandwidth / bytes per step)."""
    return _stats([x["tok_s"] / (rd["bandwidth_gbs"] * 1e9 / nbytes)
                   for x, rd in zip(res[name]["_runs"], res["rounds"])])


def headline(lm: Any, lean: Any, tokens: int, rounds: int, wb: int,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The decode figures from one set of interleaved rounds: HF ``generate``; the lean path
    through ``generate`` greedy (pipeline on), with the default sampling settings and with a
    repetition penalty; the bare lean loop (pipeline off); and any ``extra`` forwards through
    ``generate`` greedy (the full run's variants)."""
    ids = lm.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                           add_generation_prompt=True, return_dict=False)
    greedy = SamplingConfig(max_new_tokens=tokens, temperature=0.0)
    methods: dict[str, Callable[[], dict[str, Any]]] = {
        "hf_generate": lambda: hf_generate_run(lm, ids, tokens),
        "lean": lambda: generate_run(lm, lean, ids, greedy),
        "lean_bare_argmax": lambda: bare_run(lean, ids, tokens),
        "lean_default_sampling": lambda: generate_run(lm, lean, ids, SamplingConfig(max_new_tokens=tokens, seed=0)),
        "lean_sampling_rep_penalty": lambda: generate_run(
            lm, lean, ids, SamplingConfig(max_new_tokens=tokens, seed=0, repetition_penalty=1.2)),
    }
    for name, fwd in (extra or {}).items():
        methods[name] = (lambda f: lambda: generate_run(lm, f, ids, greedy))(fwd)
    eos, lm.eos_ids = lm.eos_ids, []  # the same token count everywhere
    try:
        res = decode_rounds(lm, methods, rounds)
    finally:
        lm.eos_ids = eos
    nbytes = step_bytes(lean, wb, tokens, len(ids))
    greedy_names = ["hf_generate", "lean", "lean_bare_argmax", *(extra or {})]
    res["all_greedy_paths_same_tokens"] = all(res[k]["tokens"] == res["hf_generate"]["tokens"]
                                              for k in greedy_names)
    bws = [rd["bandwidth_gbs"] for rd in res["rounds"]]
    res["bytes_per_step"] = nbytes
    res["bandwidth_gbs"] = _stats(bws)
    res["bound_tok_s"] = _stats([b * 1e9 / nbytes for b in bws])
    res["lean_vs_hf_generate"] = ratio(res, "lean", "hf_generate")
    res["lean_fraction_of_bound"] = fraction_of_bound(res, "lean", nbytes)
    # against the run's best bandwidth reading: the strictest form of the same figure
    res["lean_fraction_of_best_bound"] = res["lean"]["tok_s"]["median"] / (max(bws) * 1e9 / nbytes)
    res["bare_fraction_of_bound"] = fraction_of_bound(res, "lean_bare_argmax", nbytes)
    res["hf_generate_fraction_of_bound"] = fraction_of_bound(res, "hf_generate", nbytes)
    res["pipeline_on_vs_off"] = {k: ratio(res, k, "lean_bare_argmax")
                                 for k in ("lean", "lean_default_sampling", "lean_sampling_rep_penalty")}
    for name in extra or {}:
        res[f"{name}_vs_hf_generate"] = ratio(res, name, "hf_generate")
        res[f"{name}_fraction_of_bound"] = fraction_of_bound(res, name, nbytes)
    for k in methods:
        del res[k]["_runs"]
    res["tokens"] = tokens
    return res


def print_headline(lm: Any, h: dict[str, Any], extra: tuple[str, ...] = ()) -> None:
    bw, bound = h["bandwidth_gbs"], h["bound_tok_s"]
    print(f"\nread bandwidth per round {_span(bw, '{:.1f}')} GB/s · {h['bytes_per_step'] / 1e6:.0f} MB read "
          f"per step (weights + KV) → batch-1 bound {_span(bound, '{:.1f}')} tok/s")
    print(f"\nbatch-1 decode, {h['tokens']} new tokens, {len(h['rounds'])} rounds (ABBA) — "
          f"median [min–max] over rounds")
    print(f"  {'':30s} {'tok/s':>22s} {'wall ms/step':>22s} {'CPU ms/step':>22s}")
    for k in ("hf_generate", "lean", "lean_bare_argmax", "lean_default_sampling",
              "lean_sampling_rep_penalty", *extra):
        r = h[k]
        print(f"  {k:30s} {_span(r['tok_s'], '{:.1f}'):>22s} {_span(r['wall_ms'], '{:.1f}'):>22s}"
              f" {_span(r['cpu_ms'], '{:.1f}'):>22s}")
    print(f"  greedy tokens identical on every path: {h['all_greedy_paths_same_tokens']}")
    f = h["lean_fraction_of_bound"]
    print(f"\n  lean vs HF generate (same round)         {_span(h['lean_vs_hf_generate'])}×")
    print(f"  lean of the bandwidth bound (same round) {f['median']:.1%} [{f['min']:.1%}–{f['max']:.1%}]"
          f"   (against the run's best bandwidth: {h['lean_fraction_of_best_bound']:.1%}; bare loop "
          f"{h['bare_fraction_of_bound']['median']:.1%}, HF generate {h['hf_generate_fraction_of_bound']['median']:.1%})")
    p = h["pipeline_on_vs_off"]
    print(f"  pipeline on vs off (greedy; same round)  {_span(p['lean'], '{:.3f}')}")
    print(f"    default sampling (T 0.7, top-p 0.95)    {_span(p['lean_default_sampling'], '{:.3f}')}")
    print(f"    sampling + repetition penalty 1.2      {_span(p['lean_sampling_rep_penalty'], '{:.3f}')}")
    for k in extra:
        fr = h[f"{k}_fraction_of_bound"]
        print(f"  {k:40s} {_span(h[f'{k}_vs_hf_generate'])}× generate, {fr['median']:.1%} of the bound")
    loads = [rd["loadavg"] for rd in h["rounds"]]
    print(f"  load average per round: {', '.join(f'{x:.1f}' for x in loads)}")


def print_profile(name: str, p: dict[str, Any]) -> None:
    native = p.get("native_step_ms", 0.0)
    layers = (f"compiled step {native:.1f} (every layer's products, norms and attention"
              + (", and the LM head)" if not p["head_ms"] else ")") if native
              else f"layer matmuls {p['layer_matmul_ms']:.1f}")
    print(f"  {name}: {p['step_ms']:.1f} ms profiled (unprofiled {p['unprofiled_step_ms']:.1f}) = {layers}"
          f" + head {p['head_ms']:.1f} + attention {p['attention_ms']:.1f} + rest {p['rest_ms']:.1f}; aten ops "
          f"per step {p['top_level_ops']:.0f} called from Python, {p['all_ops']:.0f} in all")


def step_profiles(lm: Any, paths: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for path in paths:
        lm._forward = None
        out[path] = decode_step_profile(lm, path).to_dict()
    lm._forward = None
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=48, help="new tokens per decode run")
    ap.add_argument("--rounds", type=int, default=0,
                    help="interleaved rounds (0: 7 with --pipeline-only, else 3)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--pipeline-only", action="store_true",
                    help="the headline only: lean vs HF generate, fraction of the bandwidth bound, "
                         "pipeline on vs off, the lean step's profile (bench/results/decode_pipeline.json)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rounds = a.rounds or (7 if a.pipeline_only else 3)
    lm = load_model("default")
    out: dict[str, Any] = {"env": env_record(), "model": lm.name, "dtype": lm.dtype, "args": vars(a)}
    lean = make_lean_forward(lm.model)
    assert lean is not None, "the bundled model must be supported by the lean path"
    wb = weight_bytes(lean)
    out["weights_read_per_step_bytes"] = wb
    # the same lean path with its batch-1 step in torch ops instead of the compiled kernel
    # (engine/lm/nativestep.py): what the kernel gains, in the same rounds
    extra: dict[str, Any] = {"lean_torch_step": make_lean_forward(lm.model, native=False)}
    if lean._native_step() is None:
        from engine.lm.nativestep import unavailable_reason

        print(f"the compiled decode step is unavailable ({unavailable_reason()}): lean runs the torch step")
    fused = None
    if not a.pipeline_only:
        fused = make_lean_forward(lm.model, fuse=True)  # concatenated copies (the default adopts)
        extra |= {"standard_loop": StandardForward(lm.model), "lean_fused_copies": fused,
                 "lean_separate_projections": make_lean_forward(lm.model, fuse=False),
                 "lean_matmul_decode": make_lean_forward(lm.model, decode_attention="matmul", native=False),
                 "lean_linear_matvec": make_lean_forward(lm.model, matvec="linear", native=False)}
        out["fused_extra_weight_bytes"] = fused.extra_weight_bytes
    print(f"batch-1 decode, {rounds} interleaved rounds …", flush=True)
    h = out["decode_b1"] = headline(lm, lean, a.tokens, rounds, wb, extra)
    if not a.pipeline_only:
        std = extra["standard_loop"]
        print("batched decode …", flush=True)
        out["decode_batched"] = decode_batched(lm, {"lean": lean, "standard": std}, [1, 4, 16],
                                               max(8, a.tokens // 2), max(1, rounds - 1))
        print("prefill / scoring …", flush=True)
        out["prefill_scoring"] = prefill_scoring(lm, {"standard": std, "lean": lean}, rounds)
        print("LM head options …", flush=True)
        out["head"] = head_options(lm, lean, rounds)
    print("step profile …", flush=True)
    out["profile"] = step_profiles(lm, ("fast",) if a.pipeline_only else ("fast", "standard"))
    out["env"]["loadavg_end"] = list(os.getloadavg())
    bound = h["bound_tok_s"]["median"]
    out["goals"] = {
        "lean_vs_hf_generate": {"value": h["lean_vs_hf_generate"]["median"], "target": 2.0},
        "lean_fraction_of_bound": {"value": h["lean_fraction_of_bound"]["median"], "target": 0.85},
        "pipeline_on_vs_off": {"value": h["pipeline_on_vs_off"]["lean"]["median"], "target": None},
    }
    if not a.pipeline_only:
        bt, ps = out["decode_batched"], out["prefill_scoring"]
        med = lambda r: r["median"]  # noqa: E731
        out["goals"].update({
            "batched16_vs_batch1": {"value": med(bt["lean@16"]) / med(bt["lean@1"]), "target": 5.0},
            "scoring_lean_vs_standard": {"value": med(ps["scoring/lean"]) / med(ps["scoring/standard"]),
                                         "target": 1.3},
            "prefill_lean_vs_standard": {"value": med(ps["prefill/lean"]) / med(ps["prefill/standard"]),
                                         "target": None}})
        out["fraction_of_bound"] = {
            **{f"decode_batched/{k}": v["median"] / (int(k.split("@")[1]) * bound)
               for k, v in bt.items() if isinstance(v, dict) and "@" in k},
            **{f"prefill_scoring/{k}": v["median"] / (ps["shape"][0] * bound)
               for k, v in ps.items() if isinstance(v, dict) and "median" in v}}
    for g in out["goals"].values():
        g["met"] = None if g["target"] is None else g["value"] >= g["target"]
    written = write_result("decode_pipeline" if a.pipeline_only else "decode", out)

    env = out["env"]
    print(f"\nmodel {lm.name} {lm.dtype} · torch threads {torch.get_num_threads()} · load average "
          f"{env['loadavg'][0]:.1f} at the start → {env['loadavg_end'][0]:.1f} at the end (1-minute; "
          f"shared cores make wall times noisy: compare within a round)")
    print_headline(lm, h, tuple(extra))
    if not a.pipeline_only:
        print_sections(out, lean, fused)
    print("\nwhere a decode step goes (torch profiler, self CPU time; the profiler adds its own cost "
          "to 'rest'):")
    for path, p in out["profile"].items():
        print_profile("lean" if path == "fast" else path, p)
    print("\ngoals:")
    for k, g in out["goals"].items():
        t = f"target ≥ {g['target']}" if g["target"] else ""
        flag = "" if g["met"] is None else ("met" if g["met"] else "NOT met")
        print(f"  {k:28s} {g['value']:6.3f}  {t:14s} {flag}")
    print(f"\nwrote {written}")


def print_sections(out: dict[str, Any], lean: Any, fused: Any) -> None:
    """The full run's other sections."""
    bound = out["decode_b1"]["bound_tok_s"]["median"]
    bt, ps, h = out["decode_batched"], out["prefill_scoring"], out["head"]
    print(f"  default: {lean.describe()}; fused copies would cost {fused.extra_weight_bytes / 2**20:.0f} MiB extra")
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
    print(f"\nLM head alone ({h['positions']} prompt positions for agreement)")
    for mode in ("exact", "chunked", "int8"):
        r = h[mode]
        print(f"  {mode:8s} decode {r['decode_ms']['median']:6.2f} ms  512 pos {r['scoring512_ms']['median']:7.1f} ms"
              f"  top-1 {r['top1_agreement']:.2%}  KL mean {r['kl_mean']:.1e} max {r['kl_max']:.1e}")
    print(f"  fastest meeting top-1 100 % and KL < 1e-3: {h['fastest_meeting_rules_decode']} · default kept: exact")


if __name__ == "__main__":
    main()
