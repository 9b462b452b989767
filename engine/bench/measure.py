"""What the bench measures besides time: the load average, peak memory during a block, greedy
divergence, teacher-forced KL and top-1 agreement, reference containment, and the environment and
model fingerprints every record carries."""
from __future__ import annotations

import os
import platform
import re
import threading
from typing import TYPE_CHECKING, Any, Optional

import torch

if TYPE_CHECKING:  # for annotations: no import cycle, no torch import for the TUI
    from engine.lm.model import LoadedModel


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak on GPU, else the process RSS sampled by a
    thread every few ms (noisy and dominated by the weights; docs/bench-methods.md)."""

    def __init__(self, device: Any, every: float = 0.005) -> None:
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        self.every = every
        self.peak: Optional[int] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _read(self) -> None:
        import psutil

        self.peak = max(self.peak or 0, psutil.Process().memory_info().rss)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._read()
            self._stop.wait(self.every)

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self._read()  # a block shorter than the first tick still gets a figure
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            self.peak = int(torch.cuda.max_memory_allocated())
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self._read()


def first_divergence(a: list[int], b: list[int]) -> Optional[int]:
    """Index of the first differing token (a length difference counts); None if identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def kl_stats(ref_lp: torch.Tensor, lp: torch.Tensor) -> tuple[Optional[float], Optional[float]]:
    """Mean and max per-position KL(ref || method) in nats; ≥ 0 (tiny negatives from rounding
    are clamped)."""
    if ref_lp.numel() == 0 or lp.numel() == 0:
        return None, None
    n = min(ref_lp.shape[0], lp.shape[0])
    kl = (ref_lp[:n].exp() * (ref_lp[:n] - lp[:n])).sum(-1).clamp_min(0.0)
    return float(kl.mean()), float(kl.max())


def contains(text: str, reference: Optional[str]) -> Optional[bool]:
    if not reference:
        return None
    norm = lambda s: " ".join(s.lower().replace(".", " ").replace(",", " ").split())  # noqa: E731
    return norm(reference) in norm(text)


def ref_recall(text: str, reference: Optional[str]) -> Optional[float]:
    """Share of the reference's words found among the output's words (case and punctuation
    ignored): partial credit where ``contains`` is all or nothing ("Petra" for "Petra Vance")."""
    if not reference:
        return None
    words = lambda s: re.findall(r"\w+", s.lower())  # noqa: E731
    ref = words(reference)
    if not ref:
        return None
    have = set(words(text))
    return sum(w in have for w in ref) / len(ref)


_ROUGE: list = []


def rouge_l(text: str, reference: Optional[str]) -> Optional[float]:
    """ROUGE-L F1 of the output against a reference summary (the ``rouge-score`` package, Porter
    stemming), for summarization queries; None without a reference."""
    if not reference:
        return None
    if not _ROUGE:
        from rouge_score import rouge_scorer

        _ROUGE.append(rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True))
    return float(_ROUGE[0].score(reference, text)["rougeL"].fmeasure)


def env_info(lm: LoadedModel) -> dict:
    import transformers

    dev = lm.torch_device
    return {"device": str(dev), "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform(terse=True),
            "cpus": os.cpu_count() or 0, "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(dev) if getattr(dev, "type", "") == "cuda" else None}


def model_info(lm: LoadedModel) -> dict:
    return {"id": str(lm.name), "dtype": str(lm.dtype)}
