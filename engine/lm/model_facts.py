"""Facts about a loaded model read from its config, tokenizer and generation config: how long a
context it takes and which token ids end an answer. Torch-free (duck-typed on the objects)."""
from __future__ import annotations

from typing import Any


def context_length_of(config: Any, tokenizer: Any = None) -> int:
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    v = getattr(tokenizer, "model_max_length", None)
    if isinstance(v, int) and 0 < v < 10**7:
        return v
    return 2048


def eos_ids_of(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends an answer: generation config EOS (int or list), tokenizer EOS, and the
    template's end-of-turn token when it is a single special token (e.g. ``<|im_end|>``)."""
    ids: list[int] = []

    def add(v: Any) -> None:
        if v is None:
            return
        if isinstance(v, (list, tuple)):
            for x in v:
                add(x)
        elif isinstance(v, int) and v >= 0 and v not in ids:
            ids.append(v)

    gc = getattr(model, "generation_config", None)
    add(getattr(gc, "eos_token_id", None))
    add(getattr(model.config, "eos_token_id", None))
    add(getattr(tokenizer, "eos_token_id", None))
    vocab = tokenizer.get_vocab()
    for name in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>", "</s>"):
        if name in vocab and name in (tokenizer.all_special_tokens + [str(t) for t in
                                      getattr(tokenizer, "added_tokens_decoder", {}).values()]):
            add(vocab[name])
    return ids
