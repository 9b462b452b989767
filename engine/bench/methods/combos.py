"""Which methods combine (``prompt+cache``, run by combined.py) and how a combination is named:
torch-free, so the registry can validate names without importing a method, and combined.py can
use the same vocabulary without importing the registry back."""
from __future__ import annotations

from typing import Optional

# what is fed + how it is cached
PROMPT_SIDE = ("prune-nth", "prune-selfinfo")
CACHE_SIDE = ("kv-fp8", "evict-sinks", "evict-cake", "evict-snapkv", "evict-pyramidkv", "kv-contiguous",
              "hybrid-kv")


def split_combination(name: str) -> Optional[tuple[str, str]]:
    """'prune-nth+kv-fp8' → ('prune-nth', 'kv-fp8'); None unless it is a valid PROMPT+CACHE pair."""
    parts = [s.strip() for s in name.split("+")]
    if len(parts) == 2 and parts[0] in PROMPT_SIDE and parts[1] in CACHE_SIDE:
        return parts[0], parts[1]
    return None
