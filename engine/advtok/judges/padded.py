"""Batched greedy decoding and next-token logits for judge prompts of different lengths, equal to
running them one at a time: prompts are left-padded, pads are masked out of attention, and every
row gets its true positions (0 at its own first token), so a row's numbers do not depend on what
else is in the batch. (Naive right padding makes a short row read a pad's logits and changes its
verdict — why reference judges ran one at a time. With RoPE a uniform position shift cancels
out, but explicit positions keep absolute-position and scaled-RoPE models exact too.)"""
from __future__ import annotations

from typing import Any, Optional, Sequence


def _pad(prompts: Sequence[Sequence[int]], pad_id: int, device: Any) -> tuple[Any, Any, Any]:
    import torch

    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), L), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, L - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, L - len(p):] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def _forward(model: Any) -> Any:
    from engine.lm.forward import StandardForward

    fw = getattr(model, "_tokenforge_judge_forward", None)
    if fw is None:
        fw = StandardForward(model)
        try:
            model._tokenforge_judge_forward = fw
        except AttributeError:
            pass
    return fw


def next_logits(model: Any, prompts: Sequence[Sequence[int]], pad_id: int) -> Any:
    """(B, vocab) float logits of the token after each prompt, one batched forward."""
    fw = _forward(model)
    ids, mask, pos = _pad(prompts, pad_id, fw.device)
    return fw.logits(ids, fw.new_cache(len(prompts)), position_ids=pos, attention_mask=mask)[:, -1]


def greedy(model: Any, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, pad_id: int,
           stop_ids: Sequence[int] = (), cancel: Optional[Any] = None,
           tokenizer: Any = None, on_logits: Optional[Any] = None) -> list[list[int]]:
    """Greedy continuation of every prompt (at most ``max_new_tokens``; a row stops at a stop
    id, which is not returned). Batched; identical to one prompt at a time. The tokens come from
    the one decode pipeline (engine.lm.sampling's LogitsPipeline, greedy) and the rows stop by
    engine.lm.stopping's StopCriteria, both built from one SamplingConfig; a finished row leaves
    the batch (its cache rows, mask and positions with it) where the cache can be cut by rows,
    else it is fed a pad and ignored. A cancel raises Cancelled between steps.
    ``on_logits(step, rows, logits)``: each step's (len(rows), V) logits before the choice, for
    the prompts ``rows`` (indices into ``prompts``) still in the batch (a judge's token scores)."""
    import torch

    from engine.lm.config import SamplingConfig
    from engine.lm.sampling import LogitsPipeline
    from engine.lm.stopping import StopCriteria

    if not prompts:
        return []
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0).validate()
    fw = _forward(model)
    n = len(prompts)
    pipe = LogitsPipeline(cfg, fw.device).start(prompts)
    stops = StopCriteria(cfg, stop_ids, tokenizer, n, cancel=cancel)
    stops.check_cancel()
    ids, mask, pos = _pad(prompts, pad_id, fw.device)
    cache = fw.new_cache(n)
    logits = fw.logits(ids, cache, position_ids=pos, attention_mask=mask)[:, -1]
    active = list(range(n))          # the prompts the batch's rows belong to
    live = list(range(n))            # positions in the batch of the rows still decoding
    last = pos[:, -1]
    step = 0
    while True:
        if on_logits is not None:
            on_logits(step, [active[j] for j in live], logits[live])
        step += 1
        toks = pipe.choose(logits)
        still = stops.push_rows([active[j] for j in live], toks[live].tolist())
        if not still:
            break
        stops.check_cancel()
        live = [live[j] for j in still]
        if len(live) < len(active):
            try:
                sel = torch.tensor(live, dtype=torch.long, device=fw.device)
                cache = fw.select(cache, sel)
            except NotImplementedError:  # a sliding-window cache: the finished rows stay, fed pads
                pass
            else:
                active = [active[j] for j in live]
                toks, mask, last = toks[sel], mask[sel], last[sel]
                pipe.select(sel)
                live = list(range(len(active)))
        feed = toks.clone()
        done = torch.ones(len(active), dtype=torch.bool, device=feed.device)
        done[live] = False
        feed[done] = pad_id
        pipe.advance(feed)
        mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=mask.device)], 1)
        last = last + 1
        logits = fw.logits(feed[:, None], cache, position_ids=last[:, None], attention_mask=mask)[:, -1]
    return [stops.token_ids(i) for i in range(n)]


def batched(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    size = max(1, int(size))
    return [items[i:i + size] for i in range(0, len(items), size)]


def rows_for_memory(model: Any, row_tokens: int, cap: int) -> int:
    """Rows per judge batch: the user's cap, lowered so the KV cache, activations and one logits
    row per prompt fit in the usable share of the memory free on the model's device
    (engine.budget, as the response sampler's and the AdvTok scorer's batches)."""
    from engine.budget import forward_bound, rows_that_fit, usable_bytes

    p = next(model.parameters())
    bound = forward_bound("judge batch", model.config, p.element_size(), positions=row_tokens,
                          fed=row_tokens, logit_rows=1)
    return rows_that_fit(bound, max(1, int(cap)), usable_bytes(p.device))


def run_sized(model: Any, prompts: Sequence[Sequence[int]], cap: int,
              fn: Any) -> tuple[list[Any], int]:
    """``fn(batch_of_prompts) -> list`` over all prompts in memory-sized batches; on out-of-memory
    the batch size halves and the same prompts are retried (none is lost). Returns the
    concatenated results and the number of halvings."""
    from engine.budget import is_oom
    from engine.errors import EngineError

    size = rows_for_memory(model, max((len(p) for p in prompts), default=1), cap)
    out: list[Any] = []
    halvings = 0
    i = 0
    while i < len(prompts):
        chunk = prompts[i:i + size]
        try:
            res = fn(chunk)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is handled here
            if not is_oom(e):
                raise
            if len(chunk) == 1:
                raise EngineError("out of memory judging a single sample",
                                  hint="use a smaller judge model or shorter samples") from e
            size = max(1, len(chunk) // 2)
            halvings += 1
            _empty_cache(model)
            continue
        out.extend(res)
        i += len(chunk)
    return out, halvings


def _empty_cache(model: Any) -> None:
    import torch

    if next(model.parameters()).device.type == "cuda":
        torch.cuda.empty_cache()
