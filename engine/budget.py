"""Upper bounds derived from what this machine can hold: a job whose memory estimate exceeds the
usable share of available RAM is refused before it starts, with the largest value that would fit
and why (the estimate's formula), instead of growing until the kernel kills it.

The estimates are upper bounds built from the code's own storage (what each rollout, repeat or
sample keeps), not measurements; ``USABLE_SHARE`` leaves room for the model and the OS."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from engine.errors import InputError
from engine.memory import available_bytes, fmt_bytes  # noqa: F401  (re-exported)

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel

#: the share of currently available memory one job may plan to use
USABLE_SHARE = 0.5
#: the largest integer torch.Generator.manual_seed / numpy / random all accept
from engine.bounds import SEED_MAX  # noqa: F401  (re-exported: budget checks seeds too)
#: bytes of one entry of a scheduled grid (a tuple of a query reference and a repeat index);
#: measured with sys.getsizeof at import, so it follows the interpreter
GRID_ENTRY_BYTES = sys.getsizeof((object(), 10**6)) + sys.getsizeof(10**6) + 8


def device_available_bytes(device: Any = None) -> int:
    """Memory free on ``device`` now: a CUDA device's allocator view (``mem_get_info``), else
    the machine's available RAM (engine.memory; ``TOKENFORGE_MEMORY_BYTES`` overrides both)."""
    if device is not None and str(device).startswith("cuda"):
        import os

        override = os.environ.get("TOKENFORGE_MEMORY_BYTES")
        if override and override.isdigit():
            return int(override)
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    return available_bytes()


def usable_bytes(device: Any = None) -> int:
    """The share of the memory free now (on ``device``; RAM by default) one job may plan for."""
    return int(device_available_bytes(device) * USABLE_SHARE)


@dataclass(frozen=True)
class Bound:
    """The largest value of ``option`` that fits: ``per_unit`` bytes per unit of it."""

    option: str
    per_unit: int
    why: str           # how one unit's bytes were derived, shown to the user
    fixed: int = 0     # bytes needed whatever the value (e.g. a table the option's work builds)

    def limit(self, usable: Optional[int] = None) -> int:
        usable = usable_bytes() if usable is None else usable
        return max(0, (usable - self.fixed) // max(1, self.per_unit))

    def check(self, value: int, fixed: Optional[int] = None, usable: Optional[int] = None) -> None:
        """InputError when ``value`` units (+ ``fixed`` bytes, by default the bound's own)
        exceed the usable memory."""
        fixed = self.fixed if fixed is None else fixed
        usable = usable_bytes() if usable is None else usable
        need = value * self.per_unit + fixed
        if need <= usable:
            return
        top = max(0, (usable - fixed) // max(1, self.per_unit))
        raise InputError(
            f"{self.option} {value:,} needs about {fmt_bytes(need)} ({self.why}); "
            f"{fmt_bytes(usable)} is usable here ({USABLE_SHARE:.0%} of available memory), "
            f"so the limit is {self.option} ≤ {top:,}")


def kv_bytes_per_token(config: Any, dtype_bytes: int = 4) -> int:
    """Keys + values of one position over every layer, from the model config."""
    layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 1)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 0) or 1)
    kv_heads = int(getattr(config, "num_key_value_heads", 0) or heads)
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 64)
    head_dim = int(getattr(config, "head_dim", 0) or hidden // heads)
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def vocab_size(config: Any) -> int:
    return int(getattr(config, "vocab_size", 0) or 50_000)


def dtype_bytes(lm: LoadedModel) -> int:
    return 2 if str(getattr(lm, "dtype", "float32")) in ("float16", "bfloat16") else 4


def tree_rollout_bound(lm: LoadedModel, prompt_len: int, horizon: int) -> Bound:
    """Per rollout, worst case: its own KV rows for prompt + horizon positions, and a stored
    nucleus (token id int32 + log-probability fp32) of up to the whole vocabulary at each of its
    ``horizon`` new nodes."""
    kv = kv_bytes_per_token(lm.config, dtype_bytes(lm))
    v = vocab_size(lm.config)
    per = (prompt_len + horizon) * kv + horizon * v * 8
    return Bound("--rollouts", per,
                 f"per rollout ≤ ({prompt_len}+{horizon}) positions × {fmt_bytes(kv)} of KV + "
                 f"{horizon} nodes × a {v:,}-token nucleus × 8 B")


def batch_bound(lm: Any, option: str, context: int) -> Bound:
    """Per row of one decode batch (AdvTok's side-by-side samples: as many rows decode together
    as :func:`rows_that_fit` allows): its KV for ``context`` positions and one fp32 logits
    row."""
    kv = kv_bytes_per_token(lm.config, dtype_bytes(lm))
    v = vocab_size(lm.config)
    return Bound(option, context * kv + v * 4,
                 f"per row {context} positions × {fmt_bytes(kv)} of KV + {v:,} fp32 logits")


def forward_bound(option: str, config: Any, dtype_bytes: int, *, positions: int, fed: int,
                  logit_rows: int, vocab: Optional[int] = None) -> Bound:
    """Per row of one batched forward that scores or classifies (AdvTok's candidate scoring,
    the judges' prompts): the KV of ``positions`` positions, activations for the ``fed`` tokens
    (16 hidden-size fp32 vectors each, generous), and ``logit_rows`` fp32 logits rows held twice
    (the logits and their log-softmax)."""
    kv = kv_bytes_per_token(config, dtype_bytes)
    hidden = int(getattr(config, "hidden_size", 0) or 64)
    v = int(vocab if vocab is not None else getattr(config, "vocab_size", 0) or 0)
    return Bound(option, kv * positions + 16 * hidden * 4 * fed + logit_rows * v * 4 * 2,
                 f"per row {positions} positions × {fmt_bytes(kv)} of KV, activations for {fed} "
                 f"tokens and {logit_rows} × {v:,} fp32 logits")


def rows_that_fit(bound: Bound, wanted: int, usable: Optional[int] = None) -> int:
    """Rows of one decode batch: ``wanted``, lowered to what the usable memory holds at
    ``bound.per_unit`` bytes per row (never below one). The caller decodes the rest in further
    batches, and halves on an out-of-memory error all the same (:func:`is_oom`)."""
    return max(1, min(int(wanted), bound.limit(usable)))


def is_oom(e: BaseException) -> bool:
    """An allocation that failed for lack of memory (torch's OutOfMemoryError, or a
    RuntimeError saying so, which is how some backends report it)."""
    return type(e).__name__ == "OutOfMemoryError" or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def grid_bound(option: str, entries_per_unit: int) -> Bound:
    """A scheduled grid kept in memory: ``entries_per_unit`` entries per unit of the option."""
    per = max(1, entries_per_unit) * GRID_ENTRY_BYTES
    return Bound(option, per, f"{entries_per_unit:,} scheduled runs per unit × {GRID_ENTRY_BYTES} B")


#: bytes per token id of a token list that ``tokenize`` keeps and writes, measured against the
#: process's peak RSS (bench/limits.py --measure): the id in the list and its copy for the
#: output, the token's label string, and the ``--json`` text with the encoder's pieces
#: (indented: one line per id and per label). Worst case one id per byte of text.
TOKEN_LIST_ID_BYTES = 400


def samples_bound(text_bytes: int) -> Bound:
    """``tokenize --sample N``: N token lists of up to one id per byte."""
    per = 64 + max(1, text_bytes) * TOKEN_LIST_ID_BYTES
    return Bound("--sample", per, f"each sample up to {text_bytes:,} token ids × "
                                  f"{TOKEN_LIST_ID_BYTES} B (list, labels, JSON text)")


def count_table_bytes(text_bytes: int, k: int) -> int:
    """The exact-count table of neighbours at distance K (engine.advtok.mdd.MDD._g): K + 1
    Python ints per byte of text, the one at byte i as large as the count of tokenizations of
    the rest of the text, up to ~0.3 decimal digits (≈ 1 bit) per byte; summed over i that is
    about n²/16 bytes per column (n²/12 here, a margin), plus each int's and row's overhead."""
    n = max(1, text_bytes)
    return (k + 1) * (n + 1) * 36 + (n + 1) * 64 + (k + 1) * (n * n // 12)


def neighbours_bound(text_bytes: int, k: int) -> Bound:
    """``tokenize --neighbours K --limit N``: N token lists (as samples) plus the table of
    exact counts the uniform draws walk (:func:`count_table_bytes`)."""
    per = 64 + max(1, text_bytes) * TOKEN_LIST_ID_BYTES
    table = count_table_bytes(text_bytes, k)
    return Bound("--limit", per, f"each neighbour up to {text_bytes:,} token ids × "
                                 f"{TOKEN_LIST_ID_BYTES} B (list, labels, JSON text), plus "
                                 f"{fmt_bytes(table)} of exact counts for K = {k}", fixed=table)
