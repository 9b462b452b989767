"""The language-model package's settings, torch-free, each bound declared once on its field
(engine.bounds): the engine validates with it, the command line and the TUI build their checks
from it. ``SamplingConfig`` drives every decode loop through engine.lm.sampling's pipeline."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from engine.bounds import BIG, MAX_TEXT_CHARS, SEED_MAX, bounded, check
from engine.errors import InputError

#: banned token ids per generation: past a vocabulary's size (~256K for the largest) the list
#: could only ban everything
MAX_BANNED = 262_144


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
    stop_strings: tuple[str, ...] = ()
    repetition_penalty: float = bounded(1.0, lo=0.0, hi=100.0, lo_open=True,
                                        label="repetition penalty")
    min_p: float = bounded(0.0, lo=0.0, hi=1.0, label="min-p")
    banned_ids: tuple[int, ...] = ()

    def validate(self, context_length: Optional[int] = None) -> "SamplingConfig":
        check(self)
        if context_length is not None and self.max_new_tokens >= context_length:
            raise InputError(f"max_new_tokens {self.max_new_tokens} must be below the context "
                             f"length {context_length}")
        self.stop_strings = tuple(s for s in self.stop_strings if s)
        bad = [i for i in self.banned_ids if isinstance(i, bool) or not isinstance(i, int) or i < 0]
        if bad:
            raise InputError(f"banned ids: {bad[0]!r} is not a token id (a whole number ≥ 0)")
        if len(self.banned_ids) > MAX_BANNED:
            raise InputError(f"banned ids: {len(self.banned_ids):,} given, at most {MAX_BANNED:,}")
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
#: the same, with the short names a flag or a profile may use (engine.lm.model.resolve_dtype)
DTYPE_NAMES = DTYPES + ("fp32", "fp16", "bf16")


@dataclass
class ModelConfig:
    """How a model is loaded and run. The spec and the device are checked where they are
    resolved (a spec is a path, a .gguf file or a cached hub id; a device auto, cpu, mps or
    cuda[:N]), the rest by its declared bound."""

    model: str = "default"
    device: str = "auto"
    dtype: str = bounded("auto", choices=DTYPE_NAMES)
    engine_path: str = bounded("fast", choices=ENGINE_PATHS, label="engine path")
    # at most this many positions; always held to the model's own window when it loads, so a
    # large value just means "the window". Below 16 not even a chat template's frame fits.
    context_size: Optional[int] = bounded(None, lo=16, hi=SEED_MAX, optional=True, kind="int",
                                          label="context size")

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
