"""Chunked prefill: a long prompt is fed through any :class:`~engine.lm.forward.Forward` in pieces,
with a cancel check and a progress report (tokens prefilled / total, tok/s, ETA) between them.

Why: one forward over thousands of tokens is a single uninterruptible torch call (a 40 KB message
took 75 s to cancel). Feeding it in chunks after the cache gives the same logits (the cache is
extended exactly as a one-shot call would; both forwards handle a multi-token feed after a cache,
as every chat turn does) and bounds the time between checks. The chunk size adapts so one chunk
takes about ``target_s`` on this machine, whatever the prompt length: the per-token cost grows with
the context (attention), so a fixed size that is fast at the start can be slow at 8K.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import torch

from engine.progress import CancelToken, ProgressFn, check, report

FIRST_CHUNK = 64
MIN_CHUNK = 16
MAX_CHUNK = 1024
TARGET_S = 0.25


def prefill(fwd: Any, ids: torch.Tensor, cache: Any, *, keep: int = 1,
            progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None,
            target_s: float = TARGET_S, first_chunk: int = FIRST_CHUNK,
            max_chunk: int = MAX_CHUNK) -> torch.Tensor:
    """Feed ``ids`` (B, T) after ``cache`` (extended in place) and return the fp32 logits of the
    last ``keep`` positions, like ``fwd.logits(ids, cache, keep=keep)``. Prompts up to
    ``first_chunk`` tokens go in one call. On cancel, :class:`Cancelled` is raised between chunks
    and the cache holds the chunks already fed (a prefix of ``ids``)."""
    total = int(ids.shape[1])
    if total <= first_chunk:
        return fwd.logits(ids, cache, keep=keep)
    if keep > MIN_CHUNK:
        raise ValueError(f"keep={keep} is larger than the smallest chunk ({MIN_CHUNK})")
    done, chunk = 0, first_chunk
    t0 = time.perf_counter()
    report(progress, "prefill", 0, total, f"prefilling {total:,} prompt tokens")
    while True:
        check(cancel)
        n = min(chunk, total - done)
        last = done + n >= total
        if not last and total - done - n < MIN_CHUNK:  # never leave a sliver for the end
            n, last = total - done, True
        c0 = time.perf_counter()
        out = fwd.logits(ids[:, done:done + n], cache, keep=keep if last else 1)
        dt = time.perf_counter() - c0
        done += n
        el = time.perf_counter() - t0
        rate = done / el if el > 0 else 0.0
        report(progress, "prefill", done, total, f"prefilled {done:,}/{total:,} prompt tokens",
               tok_s=round(rate, 1), eta_s=round((total - done) / rate, 1) if rate else None,
               chunk=n)
        if last:
            return out
        # next chunk sized to take about target_s at the current per-token cost (which rises
        # with the context); at most doubling, so one slow estimate cannot overshoot far
        per_tok = dt / n if n else 0.0
        want = int(target_s / per_tok) if per_tok > 0 else max_chunk
        chunk = max(MIN_CHUNK, min(max_chunk, want, 2 * n))
