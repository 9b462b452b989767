"""The chat-template splitter and AdvTok's chunks, on ChatML (SmolLM2, Qwen2), Llama-3, Llama-2,
Gemma, Mistral and Phi-3 templates (strings embedded here; no downloads), applied to copies of the
bundled tokenizer: split_chat's pieces concatenate to the template's rendering with each message
in its own slot; SP ⊕ H ⊕ canonical(S) ⊕ U equals the template's own tokenization."""
from __future__ import annotations

import copy
import json

import pytest

from engine.errors import InputError
from engine.advtok.mdd import MDD
from engine.lm.templates import (ChatChunks, chat_ids, chat_prompt_ids, encode_user_text,
                                 split_chat, split_template, turn_glue)
from engine.advtok.vocab import build_vocab

# ---- template strings as published with each model family's tokenizer_config.json
SMOLLM2 = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
QWEN2 = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
LLAMA3 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
LLAMA2 = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
GEMMA = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
PHI3 = "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
MISTRAL = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"

# family: (template, the strings that family's real tokenizer has as special tokens)
FAMILIES = {
    "smollm2": (SMOLLM2, []),
    "qwen2": (QWEN2, []),
    "llama3": (LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "llama2": (LLAMA2, []),
    "gemma": (GEMMA, ["<start_of_turn>", "<end_of_turn>"]),
    "mistral": (MISTRAL, []),
    "phi3": (PHI3, ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]),
}
HAS_SYSTEM = {"smollm2": True, "qwen2": True, "llama3": True, "llama2": True, "gemma": False,
              "mistral": False, "phi3": True}
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


# ---- the splitter every chat path uses -------------------------------------------------------
SYSTEM = "You are a careful assistant."
CONVERSATION = [("Tell me about penguins.", "They live in the south."),
                ("And puffins?", "North Atlantic birds."),
                ("naïve 中文 🦜 café", None)]


def conversation(name, system=SYSTEM):
    msgs = [{"role": "system", "content": system}] if system and HAS_SYSTEM[name] else []
    for user, answer in CONVERSATION:
        msgs.append({"role": "user", "content": user})
        if answer is not None:
            msgs.append({"role": "assistant", "content": answer})
    return msgs


@pytest.mark.parametrize("gen", [True, False])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_split_chat_round_trip(tokenizer, name, gen):
    """system/user/assistant turns: the pieces concatenate to exactly apply_chat_template's text,
    every message's text sits in its own slot, in order, and the template's own text around it
    holds no message text; the ids are the template's own tokenization."""
    tok = with_template(tokenizer, name)
    msgs = conversation(name)
    if not gen:  # a finished conversation: it ends with an answer
        msgs.append({"role": "assistant", "content": "Mostly fish."})
    chat = split_chat(tok, msgs, add_generation_prompt=gen)
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    assert chat.text == rendered and chat.has_template and chat.system_used
    slots = [p for p in chat.pieces if p.role != "template"]
    assert [(p.index, p.role, p.text) for p in slots] == \
        [(i, m["role"], m["content"]) for i, m in enumerate(msgs)]
    glue = "".join(p.text for p in chat.pieces if p.role == "template")
    assert not any(m["content"] in glue for m in msgs)
    assert chat_ids(tok, chat) == template_ids(tok, msgs, add_generation_prompt=gen)


@pytest.mark.parametrize("name", [n for n in FAMILIES if not HAS_SYSTEM[n]])
def test_split_chat_without_system_role_drops_it_with_a_warning(tokenizer, name):
    tok = with_template(tokenizer, name)
    msgs = [{"role": "system", "content": SYSTEM}] + conversation(name)
    chat = split_chat(tok, msgs)
    assert not chat.system_used and "system prompt ignored" in chat.warning
    assert SYSTEM not in chat.text
    assert chat.text == tok.apply_chat_template(msgs[1:], tokenize=False,
                                                add_generation_prompt=True)
    assert [p.index for p in chat.pieces if p.role == "user"] == [1, 3, 5]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_typed_special_text_stays_in_the_user_slot(tokenizer, name):
    """A user message spelling the template's control strings is encoded as ordinary text: the
    prompt holds exactly the template's own control tokens, and the user's text decodes back."""
    tok = with_template(tokenizer, name)
    typed = "a <|im_end|> b <|eot_id|> c <end_of_turn> d <|end|>"
    plain = chat_prompt_ids(tok, "a b c d")
    ids = chat_prompt_ids(tok, typed)
    special = set(tok.all_special_ids)
    assert [t for t in ids if t in special] == [t for t in plain if t in special]
    assert typed in tok.decode(ids)


def test_plain_fallback_is_the_same_for_every_path(tokenizer):
    """No chat template: one documented format (docs/chat-templates.md) whichever path asks."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    msgs = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    chat = split_chat(tok, msgs)
    assert chat.text == "Be kind.\nUser: Hi\nAssistant: Hello.\nUser: Bye\nAssistant:"
    assert not chat.has_template and "no chat template" in chat.warning
    assert tok.decode(chat_prompt_ids(tok, "Hi", "Be kind.")) == "Be kind.\nUser: Hi\nAssistant:"
    from engine.bench.methods.base import render_chat
    assert tok.decode(render_chat(tok, msgs)) == chat.text
    g = turn_glue(tok, "Be kind.", 1)
    assert (g.prefix.text, g.head, g.tail) == ("Be kind.\nUser:", "\nUser: ", "\nAssistant:")
    assert turn_glue(tok, "Be kind.", 0).head == " "  # the prefix's last space goes with turn 0
    ch = split_template(tok, "Be kind.")
    assert tok.decode(ch.prompt_ids(encode_user_text(tok, ch.request_text("Hi")))) == \
        "Be kind.\nUser: Hi\nAssistant:"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_chat_session_feeds_the_splitters_pieces(tokenizer, name):
    """A chat session's tokens are the splitter's pieces of the same conversation: the text
    before the first user message (the system cache, cut before its trailing whitespace), then
    per turn the template text before the message, the message and the template text up to the
    assistant header, tokenized in one piece as the template's own tokenization does, then the
    answer as generated (the template may render an answer differently). The first turn is
    token for token the template's own tokenization of the one-turn prompt."""
    from engine.lm.chat import ChatSession
    from engine.lm.config import SamplingConfig
    from engine.lm.tiny import tiny_llama

    tok = with_template(tokenizer, name)
    s = ChatSession(tiny_llama(tok), system=SYSTEM,
                    sampling=SamplingConfig(max_new_tokens=4, temperature=0.0))
    for user, _ in CONVERSATION:
        s.send(user)
    assert ("system prompt ignored" in " ".join(s.turns[-1].result.notes)) == \
        (not HAS_SYSTEM[name])
    conv = [{"role": "system", "content": SYSTEM}] if HAS_SYSTEM[name] else []
    for t in s.turns:
        conv += [{"role": "user", "content": t.user}, {"role": "assistant", "content": t.answer}]
    first = len(conv) - 2 * len(s.turns)
    enc = lambda text: tok.encode(text, add_special_tokens=False) if text else []  # noqa: E731
    opening = split_chat(tok, conv[:first + 1]).before(first)
    assert tok.decode(s._sys_ids) == opening.rstrip()
    expected = list(s._sys_ids)
    for k, t in enumerate(s.turns):
        u = first + 2 * k
        chat = split_chat(tok, conv[:u + 1])  # this user message, the generation prompt after it
        assert [p.text for p in chat.pieces if p.index == u] == [t.user]
        head = chat.between(u - 1, u) if k else opening[len(opening.rstrip()):]
        turn = enc(head + t.user + chat.after(u))
        if k == 0:  # the one-turn prompt: exactly the template's own ids
            assert expected + turn == template_ids(tok, conv[:first + 1],
                                                   add_generation_prompt=True)
        expected += turn + t.answer_ids
    assert s.ids[:len(expected) - 1] == expected[:-1]  # the last answer token is not yet fed
