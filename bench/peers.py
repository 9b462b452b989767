"""Decode speed against the tools a user would pick instead (issue 15), side by side on the bundled
GGUF: same prompt token ids, same number of new tokens, same thread count, greedy, peers
alternating within one run (each round runs every peer once, the order rotating).

    .venv/bin/python bench/peers.py [--tokens 64] [--rounds 3] [--threads 2] [--peers a,b,…]

Peers: ``hf-generate`` (transformers ``generate`` on the de-quantized fp32 model), ``lean`` (this
project's exact fp32 lean forward, the default engine path), ``int8`` (the reduced-precision
decode path, INEXACT), ``llama.cpp`` (``llama-cpp-python`` on the GGUF itself, Q4_1: "skipped: not
installed" unless ``make peers`` ran), ``ort-genai-fp32`` / ``ort-genai-int4`` (ONNX Runtime
GenAI, only when importable and ``make peers-ort`` has converted the model into
``cache/peers/ort-{fp32,int4}``; int4 is its builder's block quantization, so INEXACT). Each peer runs in its own subprocess,
so its peak RSS (``ru_maxrss``) is its own: interpreter, libraries, weights and cache.

Per peer: decode tok/s ((new − 1) / decode time), time to first token (prefill + first token),
peak RSS, load time, and greedy agreement with the fp32 path (the ``lean`` tokens; first
divergence index, None = identical). EOS is masked in every peer (HF: ``min_new_tokens``) so all
produce the same count. Ratios are per round against that round's ``hf-generate``; medians are
printed. Writes bench/results/peers.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from _util import ROOT, env_record, median_iqr, write_result

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
PEERS = ("hf-generate", "lean", "int8", "llama.cpp", "ort-genai-fp32", "ort-genai-int4")
TORCH_PEERS = ("hf-generate", "lean", "int8")


# ---- workers (one per subprocess) -------------------------------------------------------------
def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _torch_worker(peer: str, ids: list[int], n: int, threads: int, eos: list[int]) -> dict:
    import torch

    torch.set_num_threads(threads)
    from engine.lm.fastpath import make_lean_forward
    from engine.lm.model import load_model
    from engine.lm.quantized import make_int8_forward

    t = time.perf_counter()
    lm = load_model("default")
    load_s = time.perf_counter() - t
    prompt = torch.tensor([ids])
    if peer == "hf-generate":
        from transformers.generation.streamers import BaseStreamer

        class Clock(BaseStreamer):
            def __init__(self) -> None:
                self.times: list[float] = []

            def put(self, value: Any) -> None:
                self.times.append(time.perf_counter())

            def end(self) -> None:
                pass

        def run(k: int) -> tuple[list[int], float, float]:
            clock = Clock()
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = lm.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=k,
                                        min_new_tokens=k, do_sample=False, streamer=clock,
                                        pad_token_id=eos[0] if eos else None)
            t_end = time.perf_counter()
            first = clock.times[1]  # put #0 is the prompt, #1 the first new token
            return out[0, len(ids):].tolist(), first - t0, t_end - first
    else:
        fwd = make_lean_forward(lm.model) if peer == "lean" else make_int8_forward(lm.model)
        if fwd is None:
            return {"skipped": f"{peer} path unsupported here"}
        mask_ids = torch.tensor(eos, dtype=torch.long)

        def pick(logits: Any) -> int:
            logits = logits.clone()
            logits[mask_ids] = float("-inf")
            return int(logits.argmax())

        def run(k: int) -> tuple[list[int], float, float]:
            with torch.inference_mode():
                t0 = time.perf_counter()
                cache = fwd.new_cache()
                tok = pick(fwd.logits(prompt, cache)[0, -1])
                first = time.perf_counter()
                out = [tok]
                while len(out) < k:
                    tok = pick(fwd.logits(torch.tensor([[tok]]), cache)[0, -1])
                    out.append(tok)
                return out, first - t0, time.perf_counter() - first
    run(8)  # warm-up: allocations, kernel selection, quantized copies
    toks, ttft, decode_s = run(n)
    return {"tokens": toks, "ttft_s": ttft, "decode_s": decode_s, "load_s": load_s,
            "impl": "fp32 HF generate" if peer == "hf-generate" else
            ("fp32 lean forward (exact)" if peer == "lean" else "int8 weight-only decode (INEXACT)")}


def _llama_worker(ids: list[int], n: int, threads: int, eos: list[int], gguf: str) -> dict:
    try:
        import llama_cpp
    except ImportError:
        return {"skipped": "not installed (make peers)"}
    import numpy as np

    t = time.perf_counter()
    llm = llama_cpp.Llama(model_path=gguf, n_ctx=max(512, len(ids) + n + 16), n_threads=threads,
                          n_threads_batch=threads, n_batch=512, logits_all=False, verbose=False)
    load_s = time.perf_counter() - t

    n_vocab = llm.n_vocab()

    def last_logits() -> Any:
        # logits_all=False: llama-cpp-python 0.3 keeps no scores; read the context's last row
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

    def pick(row: Any) -> int:
        row = np.array(row, dtype=np.float32, copy=True)
        row[eos] = -np.inf
        return int(row.argmax())

    def run(k: int) -> tuple[list[int], float, float]:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        tok = pick(last_logits())
        first = time.perf_counter()
        out = [tok]
        while len(out) < k:
            llm.eval([tok])
            tok = pick(last_logits())
            out.append(tok)
        return out, first - t0, time.perf_counter() - first

    run(8)
    toks, ttft, decode_s = run(n)
    return {"tokens": toks, "ttft_s": ttft, "decode_s": decode_s, "load_s": load_s,
            "impl": f"llama.cpp {getattr(llama_cpp, '__version__', '?')} on the GGUF (Q4_1)"}


def _ort_worker(ids: list[int], n: int, threads: int, eos: list[int], model_dir: Optional[str]) -> dict:
    try:
        import onnxruntime_genai as og
    except ImportError:
        return {"skipped": "not installed"}
    if not model_dir or not Path(model_dir, "genai_config.json").exists():
        return {"skipped": f"no converted model in {model_dir} (make peers-ort)"}
    import numpy as np

    cfg_path = Path(model_dir, "genai_config.json")
    cfg = json.loads(cfg_path.read_text())
    opts = cfg["model"]["decoder"].setdefault("session_options", {})
    opts["intra_op_num_threads"] = threads
    cfg_path.write_text(json.dumps(cfg, indent=2))
    t = time.perf_counter()
    model = og.Model(model_dir)
    load_s = time.perf_counter() - t

    def run(k: int) -> tuple[list[int], float, float]:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + k, do_sample=False)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(np.array([ids], dtype=np.int32))
        out: list[int] = []
        first = t0
        while len(out) < k:
            logits = np.array(gen.get_logits())[0, -1].astype(np.float32)
            logits[eos] = -np.inf
            tok = int(logits.argmax())
            out.append(tok)
            if len(out) == 1:
                first = time.perf_counter()
            if len(out) < k:
                gen.append_tokens(np.array([[tok]], dtype=np.int32))
        return out, first - t0, time.perf_counter() - first

    run(8)
    toks, ttft, decode_s = run(n)
    return {"tokens": toks, "ttft_s": ttft, "decode_s": decode_s, "load_s": load_s,
            "impl": f"onnxruntime-genai {og.__version__} ({Path(model_dir).name} ONNX from its builder)"}


def worker(args: argparse.Namespace) -> None:
    job = json.loads(args.worker_job)
    peer, ids, n, threads, eos = job["peer"], job["ids"], job["tokens"], job["threads"], job["eos"]
    try:
        if peer in TORCH_PEERS:
            res = _torch_worker(peer, ids, n, threads, eos)
        elif peer == "llama.cpp":
            res = _llama_worker(ids, n, threads, eos, job["gguf"])
        else:
            res = _ort_worker(ids, n, threads, eos, job["ort_models"].get(peer.rsplit("-", 1)[1]))
    except Exception as e:  # a peer failing is a row, not a crashed benchmark
        res = {"skipped": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    res["rss_peak_bytes"] = _rss_bytes()
    print("PEER_RESULT " + json.dumps(res), flush=True)


# ---- the orchestrating parent -----------------------------------------------------------------
def _spawn(job: dict, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(job["threads"]), TOKENIZERS_PARALLELISM="false")
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker-job", json.dumps(job)],
                       capture_output=True, text=True, timeout=timeout, cwd=str(ROOT), env=env)
    for line in p.stdout.splitlines():
        if line.startswith("PEER_RESULT "):
            return json.loads(line[len("PEER_RESULT "):])
    return {"skipped": f"worker exited {p.returncode}: {(p.stderr.strip().splitlines() or [''])[-1][:160]}"}


def first_divergence(a: list[int], b: list[int]) -> Optional[int]:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--ort-dir", default=str(ROOT / "cache" / "peers"),
                    help="folder holding ort-fp32/ and ort-int4/ (made by make peers-ort)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per worker run")
    ap.add_argument("--worker-job", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker_job:
        return worker(args)
    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad = [p for p in peers if p not in PEERS]
    if bad or args.tokens < 2 or args.rounds < 1 or args.threads < 1:
        raise SystemExit(f"bad arguments: peers must be among {', '.join(PEERS)}; tokens ≥ 2; rounds, threads ≥ 1")

    from engine.lm.model import bundled_gguf, eos_ids_of, load_tokenizer

    tok = load_tokenizer("default")
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=True,
                                  add_generation_prompt=True)
    if not isinstance(ids, list):
        ids = list(ids["input_ids"])
    from types import SimpleNamespace

    # the tokenizer's end ids (the model's generation config names the same ones for this model)
    eos = sorted(eos_ids_of(SimpleNamespace(generation_config=None,
                                            config=SimpleNamespace(eos_token_id=None)), tok))
    job0 = {"ids": [int(i) for i in ids], "tokens": args.tokens, "threads": args.threads, "eos": eos,
            "gguf": str(bundled_gguf()),
            "ort_models": {p: str(Path(args.ort_dir) / f"ort-{p}") for p in ("fp32", "int4")}}
    runs: dict[str, list[dict]] = {p: [] for p in peers}
    skipped: dict[str, str] = {}
    for r in range(args.rounds):
        order = peers[r % len(peers):] + peers[:r % len(peers)]
        for p in order:
            if p in skipped:
                continue
            res = _spawn({**job0, "peer": p}, args.timeout)
            if "skipped" in res:
                skipped[p] = res["skipped"]
                print(f"round {r + 1}: {p:18s} skipped: {res['skipped']}", flush=True)
                continue
            res["round"] = r
            res["tok_s"] = (len(res["tokens"]) - 1) / res["decode_s"]
            runs[p].append(res)
            print(f"round {r + 1}: {p:18s} {res['tok_s']:6.1f} tok/s  TTFT {res['ttft_s']:.3f} s  "
                  f"RSS {res['rss_peak_bytes'] / 2**20:6.0f} MiB", flush=True)
    ref = runs.get("lean") or []
    ref_toks = ref[0]["tokens"] if ref else None
    gen_by_round = {x["round"]: x["tok_s"] for x in runs.get("hf-generate", [])}
    summary: dict[str, Any] = {}
    for p in peers:
        if p in skipped and not runs[p]:
            summary[p] = {"skipped": skipped[p]}
            continue
        xs = runs[p]
        tps = [x["tok_s"] for x in xs]
        ratios = [x["tok_s"] / gen_by_round[x["round"]] for x in xs if x["round"] in gen_by_round]
        div = [first_divergence(ref_toks, x["tokens"]) for x in xs] if ref_toks else []
        summary[p] = {"impl": xs[0]["impl"], "tok_s_median": median_iqr(tps)[0], "tok_s": tps,
                      "vs_generate_median": median_iqr(ratios)[0] if ratios else None,
                      "vs_generate": ratios,
                      "ttft_s_median": median_iqr([x["ttft_s"] for x in xs])[0],
                      "rss_peak_mib": max(x["rss_peak_bytes"] for x in xs) / 2**20,
                      "load_s_median": median_iqr([x["load_s"] for x in xs])[0],
                      "first_divergence_vs_fp32": div[0] if div else "n/a (no lean run)",
                      "deterministic": all(x["tokens"] == xs[0]["tokens"] for x in xs)}
    print(f"\n{args.tokens} new tokens, {args.threads} threads, {args.rounds} rounds, prompt "
          f"{len(ids)} tokens (greedy, EOS masked); load avg {os.getloadavg()[0]:.1f}")
    print(f"{'peer':18s} {'tok/s':>7s} {'vs generate':>12s} {'TTFT s':>7s} {'peak RSS':>9s}  "
          f"first divergence vs fp32")
    for p, s in summary.items():
        if "skipped" in s:
            print(f"{p:18s} skipped: {s['skipped']}")
            continue
        vs = f"{s['vs_generate_median']:.2f}x" if s["vs_generate_median"] else "—"
        d = s["first_divergence_vs_fp32"]
        print(f"{p:18s} {s['tok_s_median']:7.1f} {vs:>12s} {s['ttft_s_median']:7.3f} "
              f"{s['rss_peak_mib']:7.0f} MiB  {'identical' if d is None else d}")
    out = write_result("peers", {"env": env_record(), "args": {k: v for k, v in vars(args).items()
                                                                 if k != "worker_job"},
                                 "prompt": PROMPT, "prompt_tokens": len(ids), "summary": summary,
                                 "runs": runs})
    print("wrote", out)


if __name__ == "__main__":
    main()
