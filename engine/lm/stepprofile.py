"""Where one decode step's time goes: matrix multiplies (layers and LM head apart), attention, and
everything else (norms, RoPE, cache writes, masks, dispatch). The foundation and decode benchmarks
call :func:`decode_step_profile` for either engine path so the answer comes from one place."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch

from engine.lm.nativestep import PROFILE_NAME as NATIVE_STEP  # the compiled step: one event

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::baddbmm_",
              "aten::matmul_out",
              "aten::_weight_int8pack_mm", "quantized::linear_dynamic")
ATTENTION_PREFIX = "aten::_scaled_dot_product"
SOFTMAX_OPS = ("aten::softmax", "aten::_softmax")  # the matmul attention's (HF's SDPA calls none at decode)


@dataclass
class StepProfile:
    """Per-step milliseconds from torch.profiler (self CPU time), averaged over ``steps``."""

    path: str
    steps: int
    context: int
    step_ms: float          # wall time per step under the profiler
    layer_matmul_ms: float  # q/k/v/o and MLP projections
    head_ms: float          # the LM head matmul
    attention_ms: float     # SDPA kernels, or the lean step's score/value bmm and softmax
    rest_ms: float          # norms, RoPE, cache writes, masks, sampling glue, Python dispatch
    unprofiled_step_ms: float  # the same steps without the profiler (its overhead inflates "rest")
    # the lean path's compiled batch-1 step (nativestep.py): every layer — products, norms,
    # attention — and the exact LM head in one call the profiler cannot split (then
    # layer_matmul_ms, head_ms and attention_ms are 0)
    native_step_ms: float = 0.0
    top_level_ops: float = 0.0  # aten ops called from Python per step (each costs dispatch time)
    all_ops: float = 0.0        # aten ops per step counting those they call in turn

    @property
    def matmul_ms(self) -> float:
        return self.layer_matmul_ms + self.head_ms

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["matmul_ms"] = self.matmul_ms
        d["matmul_share"] = self.matmul_ms / self.step_ms if self.step_ms else 0.0
        return d


def decode_step_profile(lm: LoadedModel, path: str = "standard", *, steps: int = 16,
                        prompt_ids: Optional[Sequence[int]] = None) -> StepProfile:
    """Profile ``steps`` greedy batch-1 decode steps on ``path`` ("standard" or "fast") after a
    short prompt. Restores ``lm.engine_path`` afterwards."""
    from torch.profiler import ProfilerActivity, profile

    from engine.lm.forward import get_forward

    saved = getattr(lm, "engine_path", "fast")
    lm.engine_path = path
    try:
        fwd = get_forward(lm)
        if prompt_ids is None:
            prompt_ids = lm.tokenizer.encode("Write a short story about a lighthouse keeper who finds a bottle.")
        vocab = int(fwd.head(torch.zeros(1, 1, lm.config.hidden_size, device=lm.torch_device)).shape[-1])
        cache = fwd.new_cache()
        nxt = fwd.logits(torch.tensor([list(prompt_ids)], device=lm.torch_device), cache)[:, -1].argmax(-1, keepdim=True)
        for _ in range(3):
            nxt = fwd.logits(nxt, cache)[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(steps):
            nxt = fwd.logits(nxt, cache)[:, -1].argmax(-1, keepdim=True)
        plain = (time.perf_counter() - t0) / steps
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                nxt = fwd.logits(nxt, cache)[:, -1].argmax(-1, keepdim=True)
            wall = (time.perf_counter() - t0) / steps
        # the lean path may split the head's 'vocab' output rows into blocks (fastweights.SplitLinear)
        head_dims = {str(vocab // p) for p in range(1, 9) if vocab % p == 0}
        # the lean step's batch-1 attention is two bmm over (kv_heads, group, head_dim) operands
        att = [fwd.n_kv, fwd.groups, fwd.head_dim] if hasattr(fwd, "groups") else None
        layer_mm = head = attn = native = 0.0
        for ev in prof.key_averages(group_by_input_shape=True):
            if ev.key == NATIVE_STEP:
                native += ev.cpu_time_total
            elif ev.key in MATMUL_OPS:
                shapes = str(ev.input_shapes)
                if att is not None and any(list(x) == att for x in ev.input_shapes[:3]):
                    attn += ev.self_cpu_time_total
                elif any(d in shapes for d in head_dims):
                    head += ev.self_cpu_time_total
                else:
                    layer_mm += ev.self_cpu_time_total
            elif ev.key in SOFTMAX_OPS:
                attn += ev.self_cpu_time_total
            elif ev.key.startswith(ATTENTION_PREFIX):
                attn += ev.cpu_time_total  # the kernel and whatever it calls
        evs = [e for e in prof.events() if e.name.startswith("aten::")]
        top = sum(1 for e in evs if e.cpu_parent is None)
        us = 1e3 * steps
        layer_mm, head, attn, native = layer_mm / us, head / us, attn / us, native / us
        step_ms = wall * 1e3
        return StepProfile(path=fwd.name, steps=steps, context=fwd.cache_len(cache), step_ms=step_ms,
                           layer_matmul_ms=layer_mm, head_ms=head, attention_ms=attn,
                           rest_ms=max(step_ms - layer_mm - head - attn - native, 0.0),
                           unprofiled_step_ms=plain * 1e3, native_step_ms=native, top_level_ops=top / steps,
                           all_ops=len(evs) / steps)
    finally:
        lm.engine_path = saved
