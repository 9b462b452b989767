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
           stop_ids: Sequence[int] = (), cancel: Optional[Any] = None) -> list[list[int]]:
    """Greedy continuation of every prompt (at most ``max_new_tokens``; a row stops at a stop
    id, which is not returned). Batched; identical to one prompt at a time."""
    import torch

    from engine.progress import check

    if not prompts:
        return []
    fw = _forward(model)
    ids, mask, pos = _pad(prompts, pad_id, fw.device)
    cache = fw.new_cache(len(prompts))
    logits = fw.logits(ids, cache, position_ids=pos, attention_mask=mask)[:, -1]
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    stops = set(int(s) for s in stop_ids)
    last = pos[:, -1]
    for step in range(max_new_tokens):
        check(cancel)
        nxt = logits.argmax(-1)
        for i, t in enumerate(nxt.tolist()):
            if done[i]:
                continue
            if t in stops:
                done[i] = True
            else:
                out[i].append(t)
        if all(done) or step == max_new_tokens - 1:
            break
        feed = torch.where(torch.tensor(done, device=nxt.device), torch.full_like(nxt, pad_id), nxt)
        mask = torch.cat([mask, torch.ones((len(prompts), 1), dtype=mask.dtype, device=mask.device)], 1)
        last = last + 1
        logits = fw.logits(feed[:, None], cache, position_ids=last[:, None], attention_mask=mask)[:, -1]
    return out


def batched(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    size = max(1, int(size))
    return [items[i:i + size] for i in range(0, len(items), size)]


MEMORY_FRACTION = 0.5


def rows_for_memory(model: Any, row_tokens: int, cap: int) -> int:
    """Rows per judge batch: the user's cap, lowered so the KV cache, activations and one logits
    row per prompt fit in half the free memory (CUDA ``mem_get_info``, RAM on CPU)."""
    from engine.advtok.score import free_memory_bytes

    cfg = model.config
    layers = int(getattr(cfg, "num_hidden_layers", 1) or 1)
    heads = int(getattr(cfg, "num_attention_heads", 1) or 1)
    kvh = int(getattr(cfg, "num_key_value_heads", heads) or heads)
    hidden = int(getattr(cfg, "hidden_size", 64) or 64)
    hd = int(getattr(cfg, "head_dim", 0) or 0) or hidden // heads
    width = next(model.parameters()).element_size()
    per_row = (2 * layers * kvh * hd * width * row_tokens + 16 * hidden * 4 * row_tokens
               + int(getattr(cfg, "vocab_size", 0) or 0) * 4 * 2)
    free = free_memory_bytes(next(model.parameters()).device)
    b = max(1, int(cap))
    if free is not None and per_row > 0:
        b = min(b, max(1, int(free * MEMORY_FRACTION) // per_row))
    return b


def _is_oom(e: BaseException) -> bool:
    import torch

    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def run_sized(model: Any, prompts: Sequence[Sequence[int]], cap: int,
              fn: Any) -> tuple[list[Any], int]:
    """``fn(batch_of_prompts) -> list`` over all prompts in memory-sized batches; on out-of-memory
    the batch size halves and the same prompts are retried (none is lost). Returns the
    concatenated results and the number of halvings."""
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
            if not _is_oom(e):
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
