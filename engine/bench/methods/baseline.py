"""The reference row: full prompt, fresh DynamicCache, standard HF forward, greedy manual loop.
Every other row's ratios and fidelity KL are taken against this one."""
from __future__ import annotations

from .base import Method


class Baseline(Method):
    name = "baseline"
    label = "Baseline (DynamicCache, full prompt)"
    tf_chunked = True  # a plain cache: one chunked forward equals step-by-step feeding
