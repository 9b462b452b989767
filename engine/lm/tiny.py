"""A tiny randomly initialised Llama with the bundled tokenizer: same code paths as the real
model, ~3 M parameters, so tests run in milliseconds. Deterministic for a given seed."""
from __future__ import annotations

from typing import Any

from engine.lm.model import LoadedModel, from_parts

EMBED_SCALE = 16.0


def tiny_llama(tokenizer: Any, seed: int = 0, layers: int = 2, hidden: int = 64,
               heads: int = 4, kv_heads: int = 2, max_positions: int = 2048,
               tied: bool = False) -> LoadedModel:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv_heads, tie_word_embeddings=tied,
                      max_position_embeddings=max_positions,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    # random init gives near-uniform logits; scale the head so greedy choices are well separated
    # (untied by default: with a tied random head the model just repeats its last token)
    with torch.no_grad():
        model.lm_head.weight.mul_(EMBED_SCALE)
    return from_parts(model, tokenizer, name="tiny-llama")
