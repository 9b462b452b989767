"""Shared by the lean-forward tests (test_fastpath.py, test_fastcache.py, test_fastdecode.py): the
prompts, the tolerance against the standard forward, a (standard, lean) pair on one model, and
tiny models of the other supported families."""
from __future__ import annotations

import torch

from engine.lm.fastpath import LeanForward, make_lean_forward
from engine.lm.forward import StandardForward
from engine.lm.model import from_parts

ATOL = 1e-4
PROMPTS = ["Tell me about penguins and the sea.", "What is 17 times 23?",
           "Écris un poème sur la mer 🌊 en trois lignes."]


def chat_ids(tok, text):
    return tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                   return_dict=False)


def lean_pair(lm):
    lean = make_lean_forward(lm.model)
    assert isinstance(lean, LeanForward)
    return StandardForward(lm.model), lean


def assert_close(a, b):
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= ATOL, err


#: other Llama-family configurations the lean path supports: qwen2 (q/k/v biases), mistral,
#: llama3 RoPE scaling, llama with attention and MLP biases
FAMILIES = [
    ("qwen2", {}),
    ("mistral", {"sliding_window": None}),
    ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 64}}),
    ("llama", {"attention_bias": True, "mlp_bias": True}),
]


def tiny_of(kind, tokenizer, **extra):
    """A 2-layer random model of that family (biases made large enough to matter)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    torch.manual_seed(1)
    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[kind]
    cfg = cls(**common, **extra)
    model = AutoModelForCausalLM.from_config(cfg).float()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1 and p.shape[0] != 64:  # biases: make them matter
                p.normal_(0, 0.5)
        model.lm_head.weight.mul_(16)
    return from_parts(model, tokenizer, name=f"tiny-{kind}")
