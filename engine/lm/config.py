"""The language-model package's settings, torch-free, each bound declared once on its field
(engine.bounds): the engine validates with it, the command line and the TUI build their checks
from it. ``SamplingConfig`` drives every decode loop through engine.lm.sampling's pipeline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from engine.bounds import BIG, MAX_TEXT_CHARS, SEED_MAX, Bound, bounded, check
from engine.errors import InputError

#: banned token ids per generation: past a vocabulary's size (~256K for the largest) the list
#: could only ban everything
MAX_BANNED = 262_144
#: a token id: every tokenizer's ids fit a signed 32-bit integer; the loaded model's own
#: vocabulary is checked when the decode pipeline is built (engine.lm.sampling)
TOKEN_ID = Bound(kind="int", lo=0, hi=2**31 - 1, label="token id")
#: stop strings per generation: every one is searched for in the new text at every token
MAX_STOP_STRINGS = 16
#: one stop string's length: up to that many characters of an answer are held back from the
#: stream while they could still be its start (engine.lm.textstream), and each token's search
#: scans that far back
STOP_STRING = Bound(kind="text", max_chars=1_000, label="stop string")


@dataclass
class SamplingConfig:
    """How to pick tokens. temperature 0 = greedy. top_k 0 = off. top_p 1.0 = off. min_p 0 = off
    (else tokens below min_p × the top token's probability are dropped). ``banned_ids``: token ids
    never chosen. Stages and their order: engine/lm/sampling.py."""

    max_new_tokens: int = bounded(256, lo=1, hi=BIG, label="max new tokens")
    temperature: float = bounded(0.7, lo=0.0, hi=100.0)
    top_k: int = bounded(0, lo=0, hi=10_000_000, label="top-k")
    top_p: float = bounded(0.95, lo=0.0, hi=1.0, lo_open=True, label="top-p")
    seed: Optional[int] = bounded(None, lo=0, hi=SEED_MAX, optional=True, kind="int")
    stop_strings: tuple[str, ...] = bounded((), max_items=MAX_STOP_STRINGS, item=STOP_STRING,
                                            label="stop strings")
    repetition_penalty: float = bounded(1.0, lo=0.0, hi=100.0, lo_open=True,
                                        label="repetition penalty")
    min_p: float = bounded(0.0, lo=0.0, hi=1.0, label="min-p")
    banned_ids: tuple[int, ...] = bounded((), max_items=MAX_BANNED, item=TOKEN_ID,
                                          label="banned ids")

    def validate(self, context_length: Optional[int] = None) -> "SamplingConfig":
        check(self)
        if context_length is not None and self.max_new_tokens >= context_length:
            raise InputError(f"max_new_tokens {self.max_new_tokens} must be below the context "
                             f"length {context_length}")
        self.stop_strings = tuple(s for s in self.stop_strings if s)
        self.banned_ids = tuple(self.banned_ids)
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


#: the forward implementations (engine.lm.forward): the lean path, the Hugging Face forward, the
#: lean path with weight-only int8 decode (inexact)
ENGINE_PATHS = ("fast", "standard", "int8")
#: weight dtypes a model is loaded in; auto = fp32 on CPU, bf16/fp16 on CUDA
DTYPES = ("auto", "float32", "float16", "bfloat16")
#: where a model runs; auto = CUDA when available, else the CPU (engine.lm.model.resolve_device)
DEVICES = ("auto", "cpu", "cuda", "mps")
#: the same, with the short names a flag or a profile may use (engine.lm.model.resolve_dtype)
DTYPE_NAMES = DTYPES + ("fp32", "fp16", "bf16")


@dataclass
class ModelConfig:
    """How a model is loaded and run. The spec is checked where it is resolved (a path, a .gguf
    file or a cached hub id), the rest by its declared bound."""

    model: str = "default"
    # cuda:N picks one GPU; whether that device exists is checked when the model loads
    device: str = bounded("auto", choices=DEVICES, pattern=r"cuda:\d+", pattern_label="cuda:N")
    dtype: str = bounded("auto", choices=DTYPE_NAMES)
    engine_path: str = bounded("fast", choices=ENGINE_PATHS, label="engine path")
    # at most this many positions; always held to the model's own window when it loads, so a
    # large value just means "the window". Below 16 not even a chat template's frame fits.
    context_size: Optional[int] = bounded(None, lo=16, hi=SEED_MAX, optional=True, kind="int",
                                          label="context size")
    # torch's intra-op threads; None = the default of engine.lm.threads (cores / local
    # processes). 1,024 is past any CPU this runs on; more threads than cores only spin.
    threads: Optional[int] = bounded(None, lo=1, hi=1024, optional=True, kind="int")

    def validate(self) -> "ModelConfig":
        check(self)
        return self


@dataclass
class ChatConfig:
    """What a chat turn (or an inspection) is given besides its sampling: the user's text, the
    system prompt, a given answer, and how many alternatives are recorded per generated token."""

    prompt: Optional[str] = bounded(None, max_chars=MAX_TEXT_CHARS, non_empty=True,
                                    optional=True)
    system: Optional[str] = bounded(None, max_chars=MAX_TEXT_CHARS, optional=True,
                                    label="system prompt")
    # a given answer to score token by token (inspect)
    response: Optional[str] = bounded(None, max_chars=MAX_TEXT_CHARS, optional=True)
    # the top-k alternatives kept beside each token: a top-k over the vocabulary per step, and
    # each one stored with the answer (and its JSON); 100 is more than any view shows
    alternatives: int = bounded(5, lo=0, hi=100)

    def validate(self) -> "ChatConfig":
        check(self)
        return self
