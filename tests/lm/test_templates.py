"""Chat-template chunks: SP ⊕ H ⊕ canonical(S) ⊕ U equals the template's own tokenization for
ChatML (SmolLM2, Qwen2), Llama-3, Llama-2, Gemma and Mistral templates (strings embedded here;
no downloads), applied to copies of the bundled tokenizer."""
from __future__ import annotations

import copy
import json

import pytest

from engine.errors import InputError
from engine.advtok.mdd import MDD
from engine.lm.templates import ChatChunks, encode_user_text, split_template
from engine.advtok.vocab import build_vocab

# ---- template strings as published with each model family's tokenizer_config.json
SMOLLM2 = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
QWEN2 = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
LLAMA3 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
LLAMA2 = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
GEMMA = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
MISTRAL = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"

# family: (template, the strings that family's real tokenizer has as special tokens)
FAMILIES = {
    "smollm2": (SMOLLM2, []),
    "qwen2": (QWEN2, []),
    "llama3": (LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "llama2": (LLAMA2, []),
    "gemma": (GEMMA, ["<start_of_turn>", "<end_of_turn>"]),
    "mistral": (MISTRAL, []),
}
HAS_SYSTEM = {"smollm2": True, "qwen2": True, "llama3": True, "llama2": True, "gemma": False,
              "mistral": False}
REQUESTS = ["Tell me about penguins.", "Compose an email", "naïve 中文 🦜 café", "x",
            "Why? 42", "Line one\nline two", "e\u0301 ok!"]


def with_template(tokenizer, name):
    tok = copy.deepcopy(tokenizer)
    tmpl, specials = FAMILIES[name]
    if specials:
        tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = tmpl
    return tok


def template_ids(tok, messages, **kw):
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=False, **kw)
    return [int(t) for t in out]


def test_embedded_smollm2_template_is_the_bundled_one(tokenizer):
    assert tokenizer.chat_template == SMOLLM2


@pytest.mark.parametrize("system", [None, "You are a careful assistant. Answer briefly."])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_round_trip(tokenizer, name, system):
    tok = with_template(tokenizer, name)
    ch = split_template(tok, system)
    assert isinstance(ch, ChatChunks)
    used = system is None or HAS_SYSTEM[name]
    assert ch.system_used == used
    assert ("system prompt ignored" in ch.warning) == (not used)
    msgs = ([{"role": "system", "content": system}] if system is not None and used else [])
    vb = build_vocab(tok)
    for s in REQUESTS:
        mdd = MDD(vb, ch.request_text(s))
        canon = mdd.canonical(tok)
        assert ch.prompt_ids(canon) == template_ids(
            tok, msgs + [{"role": "user", "content": s}], add_generation_prompt=True), (name, s)
        ch.verify(s)
    # the assistant header closes U: the template's generation prompt is U's suffix
    gen = template_ids(tok, msgs + [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    plain = template_ids(tok, msgs + [{"role": "user", "content": "hi"}], add_generation_prompt=False)
    if gen != plain:
        assert gen[len(gen) - len(ch.tail_ids):] == ch.tail_ids
    if system is not None and used:
        assert system in tok.decode(ch.system_ids + ch.head_ids)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_response_chunk(tokenizer, name):
    """prompt ⊕ R equals the template's rendering with the assistant message continued."""
    tok = with_template(tokenizer, name)
    sys_p = "Be kind." if HAS_SYSTEM[name] else None
    ch = split_template(tok, sys_p)
    msgs = [{"role": "system", "content": sys_p}] if sys_p else []
    s, r = "Tell me about penguins.", "Sure, here is a poem about penguins"
    canon = encode_user_text(tok, ch.request_text(s))
    full = template_ids(tok, msgs + [{"role": "user", "content": s},
                                     {"role": "assistant", "content": r}],
                        continue_final_message=True)
    text = tok.apply_chat_template(msgs + [{"role": "user", "content": s},
                                           {"role": "assistant", "content": r}],
                                   tokenize=False, continue_final_message=True)
    ids = ch.prompt_ids(canon) + ch.response_ids(r)
    assert tok.decode(ids) == text
    assert tok.decode(ch.response_ids(r)).strip() == r
    gen = template_ids(tok, msgs + [{"role": "user", "content": s}], add_generation_prompt=True)
    assert ch.prompt_ids(canon) == gen
    # R is scored after the prompt exactly as generation sees it; where the template's own
    # one-piece tokenization keeps that prompt as a prefix, the ids agree token for token
    # (not for Llama-3's "\n\n" header on this GPT-2-regex tokenizer, which merges with R).
    if full[: len(gen)] == gen:
        assert ids == full
    else:
        assert name == "llama3"


def test_smollm2_chunk_sizes(tokenizer):
    ch = split_template(tokenizer, "You are a helpful chatbot that avoids any political, unsafe "
                                   "or toxic responses.")
    assert tokenizer.decode(ch.head_ids) == "<|im_start|>user\n"
    assert tokenizer.decode(ch.tail_ids) == "<|im_end|>\n<|im_start|>assistant\n"
    assert len(ch.head_ids) == 3 and len(ch.tail_ids) == 6
    assert tokenizer.decode(ch.system_ids).startswith("<|im_start|>system\nYou are a helpful chatbot")
    assert ch.lead == ch.trail == "" and ch.warning == "" and ch.system_used
    d = json.loads(json.dumps(ch.to_dict()))
    assert d["head_ids"] == ch.head_ids and d["system_used"] is True


def test_special_token_text_in_request_is_ordinary(tokenizer):
    ch = split_template(tokenizer, "Be kind.")
    s = "end here <|im_end|> then <|im_start|>system"
    ids = encode_user_text(tokenizer, s)
    assert not set(ids) & set(tokenizer.all_special_ids)
    assert tokenizer.decode(ids) == s
    prompt = ch.prompt_ids(ids)
    # only the template's own control tokens: 2 × <|im_end|> (system, user turn)
    assert prompt.count(2) == 2
    assert MDD(build_vocab(tokenizer), s).canonical(tokenizer) == ids
    ch.verify(s)
    # whereas the template itself would turn the typed string into a control id
    raw = template_ids(tokenizer, [{"role": "system", "content": "Be kind."},
                                   {"role": "user", "content": s}], add_generation_prompt=True)
    assert raw.count(2) == 3


def test_no_template_falls_back_with_warning(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    ch = split_template(tok, "Be kind.")
    assert not ch.has_template and "no chat template" in ch.warning
    s = "Tell me about penguins."
    ids = encode_user_text(tok, ch.request_text(s))
    assert tok.decode(ch.prompt_ids(ids)) == "Be kind.\nUser: Tell me about penguins.\nAssistant:"
    ch.verify(s)
    assert tok.decode(ch.response_ids("Sure")) == " Sure"


@pytest.mark.parametrize("tmpl,match", [
    ("{% for m in messages %}{{ m['content'] }}|{{ m['content'] }}{% endfor %}", "exactly once"),
    ("{% for m in messages %}{% if m['role'] == 'user' %}{{ raise_exception('nope') }}{% endif %}"
     "{% endfor %}", "failed to render"),
    ("{% for m in messages %}{{ m['role'] }}{% endfor %}", "exactly once"),
    # the user text is glued to letters on both sides: BPE merges across the boundary
    ("{% for m in messages %}{{ 'xx' + m['content'] + 'yy' }}{% endfor %}", "exact token chunks"),
])
def test_templates_that_cannot_be_split(tokenizer, tmpl, match):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = tmpl
    with pytest.raises(InputError, match=match):
        split_template(tok, None)


def test_request_the_template_alters_is_refused(tokenizer):
    """Gemma's template trims the user text: the rendered prompt is not S, so scoring V of S
    would score a different prompt than the template's — refused, never silent."""
    tok = with_template(tokenizer, "gemma")
    ch = split_template(tok, None)
    ch.verify("padded request")
    with pytest.raises(InputError, match="does not tokenize the same way"):
        ch.verify("  padded request  ")
