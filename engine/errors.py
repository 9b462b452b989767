"""Errors a user can cause. Each carries one clear message; front ends show it and keep running."""
from __future__ import annotations


class EngineError(Exception):
    """Base class for errors that are the input's fault, not a bug."""

    hint: str = ""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class InputError(EngineError, ValueError):
    """Bad user input: empty prompt, out-of-range setting, text the vocabulary cannot cover."""


class ModelNotFound(EngineError):
    """Unknown model id, missing directory, or a hub id not in the local cache (offline)."""


class ModelLoadError(EngineError):
    """A model file exists but cannot be loaded (corrupt GGUF, unsupported architecture)."""


class ContextOverflow(InputError):
    """A prompt longer than the model's context window."""
