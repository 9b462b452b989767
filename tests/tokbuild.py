"""Small tokenizers built in memory for tests (no downloads): a SentencePiece-style Unigram with
``▁`` and ``<0xNN>`` byte fallback, and a plain word-piece-free vocabulary."""
from __future__ import annotations

from typing import Optional


def sentencepiece_tokenizer(prepend_scheme: str = "never", lowercase: bool = False):
    """Unigram model with ``▁`` for space and 256 ``<0xNN>`` byte-fallback pieces."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: list[tuple[str, float]] = [("<unk>", 0.0), ("<s>", 0.0), ("</s>", 0.0)]
    vocab += [(f"<0x{b:02X}>", -20.0) for b in range(256)]
    pieces = ["\u2581", "\u2581the", "\u2581a", "\u2581an", "the", "he", "th", "t", "h", "e", "a",
              "n", "an", "c", "f", "é", "café", "\u2581caf", "caf", "\u2581pen", "pen", "guin",
              "p", "g", "u", "i", "o", "s", "r", "d", "\u2581dog", "og", "do", "中", "文"]
    for k, p in enumerate(pieces):
        vocab.append((p, -1.0 - 0.5 * len(p) + 0.01 * k))
    tk = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    if lowercase:
        tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=prepend_scheme)
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                    decoders.Fuse()])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def plain_tokenizer(words: Optional[list[str]] = None):
    """A vocabulary whose token strings are their own text (no byte alphabet, no fallback)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = words or ["a", "b", "ab", "ba", "aba", " ", "é", "xé"]
    vocab = {"[UNK]": 0}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")


def byte_bpe_tokenizer(n_tokens: int, seed: int = 0):
    """A byte-level BPE vocabulary (GPT-2 ``Ġ`` alphabet) of ``n_tokens`` distinct random tokens —
    the size of Llama-3's or Qwen's (128K–150K) without downloading one. Merges are not needed
    for vocabulary work (every token string maps to its bytes by the alphabet alone)."""
    import random

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from engine.advtok.vocab import _bytes_to_unicode  # byte → printable character (GPT-2 table)

    table = _bytes_to_unicode()
    alphabet = [table[b] for b in range(256)]
    rng = random.Random(seed)
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    while len(vocab) < n_tokens:
        k = rng.choice((2, 3, 3, 4, 4, 5, 6, 7, 8, 10, 12))
        vocab.setdefault("".join(rng.choice(alphabet) for _ in range(k)), len(vocab))
    vocab["<|endoftext|>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")
