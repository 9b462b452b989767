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
                     cancel: Optional[CancelToken] = None) -> list[Any]:
    """N responses to the prompt ``SP ⊕ H ⊕ F_pre ⊕ ids ⊕ F_suf ⊕ U`` (batched over one prefix
    cache, seeded). ``prefix_cache`` may hold SP ⊕ H ⊕ F_pre already (it is forked, never
    changed). Every row decodes through the same pipeline as a single generation (repetition
    penalty included); sample i draws what one generation seeded ``seed + i`` would.
    Returns :class:`~engine.lm.results.GenerationResult` objects."""
    from engine.lm.generate import generate_batch
    from engine.lm.config import SamplingConfig

    cfg = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                         top_p=1.0 if temperature > 0 else 0.95,
                         repetition_penalty=repetition_penalty)
    tail = list(ids) + list(frozen_suffix_ids) + list(chunks.tail_ids)
    if prefix_cache is None:
        prompt = list(chunks.prefix_ids) + list(frozen_prefix_ids) + tail
        return generate_batch(lm, prompt, n, cfg, progress=progress, cancel=cancel)
    return generate_batch(lm, tail, n, cfg, cache=prefix_cache, progress=progress, cancel=cancel)


def _sample_dict(g: Any) -> dict[str, Any]:
    return {"text": g.text, "token_ids": list(g.token_ids), "stop_reason": g.stop_reason,
            "new_tokens": g.new_tokens}


def sample_pair(lm: LoadedModel, chunks: Any, adv_ids: Sequence[int], canonical_ids: Sequence[int],
                cfg: AttackConfig, *, prefix_cache: Any = None, progress: Optional[ProgressFn] = None,
                cancel: Optional[CancelToken] = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``cfg.samples`` responses with the adversarial and with the canonical tokenization: same
    template, system prompt, sampling settings and seed on both sides. After a cancel the
    samples are partial (stop_reason "cancelled") or absent."""
    out = []
    for which, ids in (("adversarial", adv_ids), ("canonical", canonical_ids)):
        def prog(p: Any, which: str = which) -> None:
            if progress is not None:
                progress(type(p)(p.phase, p.step, p.total, f"{which}: {p.message}",
                                 {**p.metrics, "side": which}))
        if cancel is not None and cancel.cancelled:
            out.append([])
            continue
        gens = sample_responses(lm, chunks, ids, cfg.samples,
                                max_new_tokens=cfg.sample_max_new_tokens,
                                temperature=cfg.sample_temperature, seed=cfg.seed,
                                repetition_penalty=cfg.sample_repetition_penalty,
                                frozen_prefix_ids=cfg.frozen_prefix_ids,
                                frozen_suffix_ids=cfg.frozen_suffix_ids,
                                prefix_cache=prefix_cache, progress=prog, cancel=cancel)
        out.append([_sample_dict(g) for g in gens])
    return out[0], out[1]
