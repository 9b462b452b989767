"""The manual decoding loops over a KV cache: one prompt (chat) or N samples sharing one prompt's
prefix cache (AdvTok responses). Each loop only feeds the forward (forward.py), asks the logits
pipeline (sampling.py) for tokens and the stop criteria (stopping.py) whether a row is done, and
times it; both are built once per call from the SamplingConfig."""
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
from engine.lm.sampling import LogitsPipeline
from engine.lm.stopping import StopCriteria

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
    a well-formed conversation. The repetition penalty counts ``prompt_ids`` and the answer.
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
    ids = _as_ids(prompt_ids, device)
    pipe = LogitsPipeline(cfg, device).start(ids)
    stops = StopCriteria(cfg, lm.eos_ids, lm.tokenizer, cancel=cancel, live=on_token is not None)
    tick = Ticker(0.1)
    t0 = time.perf_counter()
    ttft = 0.0
    step = 0
    try:
        stops.check_cancel()
        # the prompt: in chunks, cancellable, with progress
        raw = prefill(fwd, ids, cache, progress=progress, cancel=cancel)[:, -1, :]
        while True:
            tok_t = pipe.choose(raw)
            tok = int(tok_t[0])
            if step == 0:
                ttft = time.perf_counter() - t0
            step += 1
            delta, why = stops.push(0, tok)
            if why == "eos":
                break
            if observe is not None:
                observe(raw, tok)
            if delta and on_token is not None:
                on_token(delta, tok)
            if why is not None:
                break
            if progress is not None and tick.due():
                el = time.perf_counter() - t0
                report(progress, "generate", step, cfg.max_new_tokens, "generating",
                       tok_s=round((step - 1) / max(el - ttft, 1e-9), 1) if step > 1 else 0.0,
                       ttft_s=round(ttft, 3))
            stops.check_cancel()
            pipe.advance(tok_t)
            raw = fwd.logits(tok_t.view(1, 1), cache, keep=1)[:, -1, :]
    except Cancelled:
        stops.cancelled([0])
    tail = stops.flush(0)
    if tail and on_token is not None:
        on_token(tail, -1)
    total = time.perf_counter() - t0
    out_ids = stops.token_ids(0)
    n = len(out_ids)
    decode_s = total - ttft
    stop = stops.reason(0)
    res = GenerationResult(
        text=stops.text(0), token_ids=out_ids, prompt_tokens=total_prompt,
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
    times, and rows that finish (EOS, stop string, cancel) leave the batch at once. Every
    setting of ``cfg`` applies as in :func:`generate` (a row decodes what ``generate`` would with
    the same draws). Same seed, same samples. On cancel, every row returns what it has
    (stop_reason cancelled)."""
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
    ids = _as_ids(prompt_ids, device)
    pipe = LogitsPipeline(cfg, device).start(ids)
    stops = StopCriteria(cfg, lm.eos_ids, lm.tokenizer, n, cancel=cancel)
    t0 = time.perf_counter()
    ttft = 0.0
    tick = Ticker(0.1)
    active = list(range(n))
    produced = 0
    try:
        stops.check_cancel()
        logits = prefill(fwd, ids, cache, progress=progress, cancel=cancel)[:, -1, :]
        cache = fwd.repeat(cache, n)
        pipe.repeat(n)
        logits = logits.expand(n, -1)
        for step in range(cfg.max_new_tokens):
            toks = pipe.choose(logits)
            if step == 0:
                ttft = time.perf_counter() - t0
            tl = toks.tolist()
            still = stops.push_rows(active, tl)
            produced += sum(1 for t in tl if t not in stops.eos)
            if not still:
                break
            if len(still) < len(active):
                sel = torch.tensor(still, device=device)
                cache = fwd.select(cache, sel)
                active = [active[j] for j in still]
                toks = toks[sel]
                pipe.select(sel)
            stops.check_cancel()
            pipe.advance(toks)
            logits = fwd.logits(toks.view(-1, 1), cache, keep=1)[:, -1, :]
            if progress is not None and tick.due():
                el = time.perf_counter() - t0
                report(progress, "generate", step + 1, cfg.max_new_tokens,
                       f"{len(active)}/{n} samples running",
                       tok_s=round(produced / max(el, 1e-9), 1), active=len(active), samples=n)
    except Cancelled:
        stops.cancelled(active)
    total = time.perf_counter() - t0
    results = []
    for i in range(n):
        k = len(stops.token_ids(i))
        results.append(GenerationResult(
            text=stops.text(i), token_ids=stops.token_ids(i), prompt_tokens=past + len(prompt_ids),
            prefill_tokens=len(prompt_ids), new_tokens=k, ttft_s=ttft,
            decode_tok_s=produced / max(total - ttft, 1e-9) if produced else 0.0,
            total_s=total, stop_reason=stops.reason(i)))
    report(progress, "generate", cfg.max_new_tokens, cfg.max_new_tokens, f"{n} samples done",
           tok_s=round(produced / max(total, 1e-9), 1))
    return results
