"""Side-by-side responses for an AdvTok result: N samples with the adversarial and with the
canonical tokenization, same template, system prompt, sampling settings and seed on both sides,
batched over one prefix cache."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

from engine.advtok.config import AttackConfig
from engine.progress import CancelToken, ProgressFn

if TYPE_CHECKING:  # for annotations: no torch import for the TUI
    from engine.lm.model import LoadedModel

def sample_responses(lm: LoadedModel, chunks: Any, ids: Sequence[int], n: int, *, max_new_tokens: int = 64,
                     temperature: float = 0.7, seed: Optional[int] = 0,
                     repetition_penalty: float = 1.0,
                     frozen_prefix_ids: Sequence[int] = (), frozen_suffix_ids: Sequence[int] = (),
                     prefix_cache: Any = None, progress: Optional[ProgressFn] = None,
                     cancel: Optional[CancelToken] = None, rows: Optional[int] = None,
                     sizes: Optional[list[int]] = None) -> list[Any]:
    """N responses to the prompt ``SP ⊕ H ⊕ F_pre ⊕ ids ⊕ F_suf ⊕ U`` (batched over one prefix
    cache, seeded). ``prefix_cache`` may hold SP ⊕ H ⊕ F_pre already (it is forked, never
    changed). Every row decodes through the same pipeline as a single generation (repetition
    penalty included); sample i draws from the stream one generation seeded ``seed + i`` would.

    The batches are sized from memory, as the judges' are: all N rows when half the available
    memory holds them (engine.budget: each row's KV for prompt + answer and a logits row), else
    as many as it holds, the rest in further batches; a batch that still runs out of memory is
    halved and retried (no sample is lost). ``rows`` caps the batch (a replay uses the recorded
    size: a batch's size can change a logit's last bits, and with them a near-tied draw);
    ``sizes`` collects the batch size of every sample. Returns
    :class:`~engine.lm.results.GenerationResult` objects; after a cancel, the ones decoded so
    far (the interrupted batch's partial)."""
    from dataclasses import replace

    from engine.budget import batch_bound, is_oom, rows_that_fit, usable_bytes
    from engine.errors import EngineError
    from engine.lm.config import SamplingConfig
    from engine.lm.generate import generate_batch

    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                         top_p=1.0 if temperature > 0 else 0.95,
                         repetition_penalty=repetition_penalty)
    tail = list(ids) + list(frozen_suffix_ids) + list(chunks.tail_ids)
    if prefix_cache is None:
        prompt, cache = list(chunks.prefix_ids) + list(frozen_prefix_ids) + tail, None
    else:
        prompt, cache = tail, prefix_cache
    fed = len(chunks.prefix_ids) + len(frozen_prefix_ids) + len(tail)
    size = rows_that_fit(batch_bound(lm, "samples", fed + max_new_tokens),
                         min(n, rows) if rows else n, usable_bytes(lm.torch_device))
    out: list[Any] = []
    while len(out) < n:
        k = min(size, n - len(out))
        part = cfg if seed is None else replace(cfg, seed=seed + len(out))
        try:
            got = generate_batch(lm, prompt, k, part, cache=cache, progress=progress,
                                 cancel=cancel)
        except Exception as e:  # noqa: BLE001 - only out-of-memory is handled here
            if not is_oom(e):
                raise
            if k == 1:
                raise EngineError("out of memory decoding a single sample",
                                  hint="use fewer sample tokens or a smaller model") from e
            size = max(1, k // 2)
            _free_cuda(lm)
            continue
        out.extend(got)
        if sizes is not None:
            sizes.extend([k] * len(got))
        if cancel is not None and cancel.cancelled:
            break
    return out


def _free_cuda(lm: Any) -> None:
    import torch

    if str(getattr(lm, "device", "")).startswith("cuda"):
        torch.cuda.empty_cache()


def _sample_dict(g: Any, rows: int) -> dict[str, Any]:
    return {"text": g.text, "token_ids": list(g.token_ids), "stop_reason": g.stop_reason,
            "new_tokens": g.new_tokens, "batch_rows": rows}


def sample_pair(lm: LoadedModel, chunks: Any, adv_ids: Sequence[int], canonical_ids: Sequence[int],
                cfg: AttackConfig, *, prefix_cache: Any = None, progress: Optional[ProgressFn] = None,
                cancel: Optional[CancelToken] = None, rows: Optional[dict[str, int]] = None
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``cfg.samples`` responses with the adversarial and with the canonical tokenization: same
    template, system prompt, sampling settings and seed on both sides. Each sample records the
    rows of the batch it was decoded in (``batch_rows``); ``rows`` ({side: n}) caps a side's
    batches (a replay passes the recorded ones). After a cancel the samples are partial
    (stop_reason "cancelled") or absent."""
    out = []
    for which, ids in (("adversarial", adv_ids), ("canonical", canonical_ids)):
        def prog(p: Any, which: str = which) -> None:
            if progress is not None:
                progress(type(p)(p.phase, p.step, p.total, f"{which}: {p.message}",
                                 {**p.metrics, "side": which}))
        if cancel is not None and cancel.cancelled:
            out.append([])
            continue
        sizes: list[int] = []
        gens = sample_responses(lm, chunks, ids, cfg.samples,
                                max_new_tokens=cfg.sample_max_new_tokens,
                                temperature=cfg.sample_temperature, seed=cfg.seed,
                                repetition_penalty=cfg.sample_repetition_penalty,
                                frozen_prefix_ids=cfg.frozen_prefix_ids,
                                frozen_suffix_ids=cfg.frozen_suffix_ids,
                                prefix_cache=prefix_cache, progress=prog, cancel=cancel,
                                rows=(rows or {}).get(which), sizes=sizes)
        out.append([_sample_dict(g, k) for g, k in zip(gens, sizes)])
    return out[0], out[1]
