"""The manual decoding loop over a KV cache: one prompt (chat) or N samples sharing one prompt's
prefix cache (AdvTok responses, tree-search rollouts). Logits processing lives in sampling.py,
the forward in forward.py; this module only runs the loop, times it and decides when to stop."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch

from engine.errors import ContextOverflow, InputError
from engine.lm.forward import get_forward
from engine.lm.prefill import prefill
from engine.progress import Cancelled, CancelToken, ProgressFn, Ticker, report
from engine.lm.config import SamplingConfig
from engine.lm.results import GenerationResult
from engine.lm.sampling import apply_repetition_penalty, choose, make_generator
from engine.lm.textstream import TextStream

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

TokenCallback = Callable[[str, int], None]  # (text delta, token id)
#: sees each kept token's step logits (1, V), before any repetition penalty (the model's own
#: distribution), and the token chosen from them: per-token facts without another forward
LogitsObserver = Callable[[torch.Tensor, int], None]


def _as_ids(ids: Sequence[int] | torch.Tensor, device: Any) -> torch.Tensor:
    if isinstance(ids, torch.Tensor):
        t = ids.to(device)
        return t.view(1, -1) if t.dim() == 1 else t
    return torch.tensor([list(ids)], dtype=torch.long, device=device)


def generate(lm: LoadedModel, prompt_ids: Sequence[int], cfg: SamplingConfig, *,
             cache: Any = None, on_token: Optional[TokenCallback] = None,
             progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None,
             prompt_tokens: Optional[int] = None,
             observe: Optional[LogitsObserver] = None) -> tuple[GenerationResult, Any]:
    """Generate after ``cache`` (may be None) extended by ``prompt_ids`` (the uncached tail).

    Returns the result and the cache, which then holds prompt + every generated token except the
    last one chosen (that token is in ``result.token_ids``; feed it first to continue). A cancel
    returns the partial answer with stop_reason "cancelled" instead of raising: the caller keeps
    a well-formed conversation.
    """
    cfg.validate()
    fwd = get_forward(lm)
    if len(prompt_ids) == 0:
        raise InputError("nothing to generate from: the prompt has no tokens")
    if cache is None:
        cache = fwd.new_cache()
    past = fwd.cache_len(cache)
    total_prompt = prompt_tokens if prompt_tokens is not None else past + len(prompt_ids)
    if past + len(prompt_ids) + cfg.max_new_tokens > lm.context_length:
        raise ContextOverflow(
            f"prompt is {past + len(prompt_ids)} tokens and max_new_tokens is {cfg.max_new_tokens}: "
            f"{past + len(prompt_ids) + cfg.max_new_tokens} > context length {lm.context_length}")
    device = lm.torch_device
    gen = make_generator(cfg.seed, device)
    eos = set(lm.eos_ids)
    stream = TextStream(lm.tokenizer, cfg.stop_strings)
    out_ids: list[int] = []
    stop = "max_new_tokens"
    tick = Ticker(0.1)
    t0 = time.perf_counter()
    ttft = 0.0
    seen = _as_ids(prompt_ids, device)
    ids = seen
    try:
        for step in range(cfg.max_new_tokens):
            if cancel is not None:
                cancel.check()
            if step == 0:  # the prompt: in chunks, cancellable, with progress
                logits = raw = prefill(fwd, ids, cache, progress=progress, cancel=cancel)[:, -1, :]
            else:
                logits = raw = fwd.logits(ids, cache, keep=1)[:, -1, :]
            if cfg.repetition_penalty != 1.0:
                hist = torch.cat([seen, torch.tensor([out_ids], dtype=torch.long, device=device)], 1) \
                    if out_ids else seen
                logits = apply_repetition_penalty(logits, hist, cfg.repetition_penalty)
            tok = int(choose(logits, cfg, gen)[0])
            if step == 0:
                ttft = time.perf_counter() - t0
            if tok in eos:
                stop = "eos"
                break
            out_ids.append(tok)
            if observe is not None:
                observe(raw, tok)
            delta, hit = stream.push(tok)
            if delta and on_token is not None:
                on_token(delta, tok)
            if hit:
                stop = "stop_string"
                break
            if progress is not None and tick.due():
                el = time.perf_counter() - t0
                report(progress, "generate", step + 1, cfg.max_new_tokens, "generating",
                       tok_s=round((step) / max(el - ttft, 1e-9), 1) if step else 0.0,
                       ttft_s=round(ttft, 3))
            ids = torch.tensor([[tok]], dtype=torch.long, device=device)
    except Cancelled:
        stop = "cancelled"
    tail = stream.flush()
    if tail and on_token is not None:
        on_token(tail, -1)
    total = time.perf_counter() - t0
    n = len(out_ids)
    decode_s = total - ttft
    res = GenerationResult(
        text=stream.final_text, token_ids=out_ids, prompt_tokens=total_prompt,
        prefill_tokens=len(prompt_ids), new_tokens=n, ttft_s=ttft,
        decode_tok_s=(n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0,
        total_s=total, stop_reason=stop)
    report(progress, "generate", n, cfg.max_new_tokens, f"done ({stop})",
           tok_s=round(res.decode_tok_s, 1), ttft_s=round(ttft, 3), stop=stop)
    return res, cache


def generate_batch(lm: LoadedModel, prompt_ids: Sequence[int], n: int, cfg: SamplingConfig, *,
                   cache: Any = None, progress: Optional[ProgressFn] = None,
                   cancel: Optional[CancelToken] = None) -> list[GenerationResult]:
    """N samples from one prompt: the prompt is prefilled once at batch 1, its cache repeated N
    times, and rows that finish (EOS, stop string, cancel) leave the batch at once.
    Same seed, same samples. On cancel, every row returns what it has (stop_reason cancelled)."""
    cfg.validate()
    if n < 1:
        raise InputError(f"number of samples must be ≥ 1 (got {n})")
    if len(prompt_ids) == 0:
        raise InputError("nothing to generate from: the prompt has no tokens")
    fwd = get_forward(lm)
    device = lm.torch_device
    if cache is None:
        cache = fwd.new_cache()
    else:
        cache = fwd.fork(cache)
    past = fwd.cache_len(cache)
    if past + len(prompt_ids) + cfg.max_new_tokens > lm.context_length:
        raise ContextOverflow(f"prompt {past + len(prompt_ids)} + max_new_tokens {cfg.max_new_tokens} "
                              f"exceeds the context length {lm.context_length}")
    gen = make_generator(cfg.seed, device)
    eos = torch.tensor(sorted(set(lm.eos_ids)) or [-1], device=device)
    streams = [TextStream(lm.tokenizer, cfg.stop_strings) for _ in range(n)]
    outs: list[list[int]] = [[] for _ in range(n)]
    reasons = ["max_new_tokens"] * n
    t0 = time.perf_counter()
    ttft = 0.0
    tick = Ticker(0.1)
    active = torch.arange(n, device=device)
    produced = 0
    try:
        if cancel is not None:
            cancel.check()
        logits = prefill(fwd, _as_ids(prompt_ids, device), cache, progress=progress,
                         cancel=cancel)[:, -1, :]
        cache = fwd.repeat(cache, n)
        logits = logits.expand(n, -1)
        for step in range(cfg.max_new_tokens):
            if cancel is not None:
                cancel.check()
            toks = choose(logits, cfg, gen)
            if step == 0:
                ttft = time.perf_counter() - t0
            keep_rows: list[int] = []
            is_eos = torch.isin(toks, eos).tolist()
            for j, (row, tok) in enumerate(zip(active.tolist(), toks.tolist())):
                if is_eos[j]:
                    reasons[row] = "eos"
                    continue
                outs[row].append(tok)
                produced += 1
                _, hit = streams[row].push(tok)
                if hit:
                    reasons[row] = "stop_string"
                    continue
                keep_rows.append(j)
            if step == cfg.max_new_tokens - 1 or not keep_rows:
                break
            if len(keep_rows) < len(active):
                sel = torch.tensor(keep_rows, device=device)
                cache = fwd.select(cache, sel)
                active = active[sel]
                toks = toks[sel]
            logits = fwd.logits(toks.view(-1, 1), cache, keep=1)[:, -1, :]
            if progress is not None and tick.due():
                el = time.perf_counter() - t0
                report(progress, "generate", step + 1, cfg.max_new_tokens,
                       f"{len(active)}/{n} samples running",
                       tok_s=round(produced / max(el, 1e-9), 1), active=len(active), samples=n)
    except Cancelled:
        for row in active.tolist():
            if reasons[row] == "max_new_tokens":
                reasons[row] = "cancelled"
    total = time.perf_counter() - t0
    results = []
    for i in range(n):
        k = len(outs[i])
        results.append(GenerationResult(
            text=streams[i].final_text, token_ids=outs[i], prompt_tokens=past + len(prompt_ids),
            prefill_tokens=len(prompt_ids), new_tokens=k, ttft_s=ttft,
            decode_tok_s=produced / max(total - ttft, 1e-9) if produced else 0.0,
            total_s=total, stop_reason=reasons[i]))
    report(progress, "generate", cfg.max_new_tokens, cfg.max_new_tokens, f"{n} samples done",
           tok_s=round(produced / max(total, 1e-9), 1))
    return results
