"""Memory as measured, beside the bytes a method counts.

- ``allocated_bytes(cache)``: the bytes of every storage behind the cache's tensors, each storage
  once, spare capacity included (a preallocated buffer counts whole; a view into it does not
  shrink it). "Counted" bytes (``Forward.cache_bytes``) only multiply logical shapes.
- ``CopyMeter``: bytes *written* into the cache per generated token. After every step it looks at
  which storages the cache's tensors live in: a tensor on a storage that did not exist before the
  step was written whole (``torch.cat`` in ``DynamicCache`` re-copies each layer every step, an
  eviction's gather copies what it keeps, a buffer that grows copies its contents); on a storage
  that persists only the growth was written (an append in place). A layer that counts its own
  writes (``bytes_written``: the contiguous buffer, which also compacts in place) is read as is.
  It reads pointers, shapes and counters, never data, and its own time is returned so the harness can leave it out of the timings.
- ``HighWater``: the process's memory high-water mark over its state just before a block: on CPU
  the kernel's VmHWM (reset through ``/proc/self/clear_refs``, so it is exact, not sampled) minus
  the RSS at the start, after giving freed heap back to the system (``malloc_trim``) so memory
  the allocator kept from earlier runs does not hide this run's needs; on CUDA the allocator's
  peak minus what was allocated at the start.
"""
from __future__ import annotations

import gc
import re
import time
import weakref
from typing import Any, Iterator, Optional

import torch


def _tensors(obj: Any, depth: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(tensor, the tensor it lives in) for the K/V a cache holds: HF caches (``layers`` of
    objects holding tensors or tuples of them, quantized ones included), the lean cache (its
    buffer, viewed to the cache's length), or any object's tensor attributes a few levels down.
    The owner is named explicitly: views made under inference mode have no ``_base``."""
    if torch.is_tensor(obj):
        yield obj, obj
        return
    if depth > 3 or obj is None or isinstance(obj, (int, float, str, bool, torch.nn.Module)):
        return
    views = getattr(obj, "kv_views", None)  # a cache layer that names its own buffers
    if callable(views):
        yield from views()
        return
    store, length = getattr(obj, "store", None), getattr(obj, "length", None)
    if store is not None and isinstance(length, int) and torch.is_tensor(getattr(store, "k", None)):
        yield store.k[..., :length, :], store.k  # the lean cache: (layers, batch, heads, cap, dim)
        yield store.v[..., :length, :], store.v
        return
    if isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x, depth + 1)
        return
    if isinstance(obj, dict):
        for x in obj.values():
            yield from _tensors(x, depth + 1)
        return
    fields = getattr(obj, "__dict__", None)
    if fields is None and hasattr(obj, "__slots__"):
        fields = {s: getattr(obj, s, None) for s in obj.__slots__}
    for x in (fields or {}).values():
        yield from _tensors(x, depth + 1)


def _storage(t: torch.Tensor) -> tuple[int, int]:
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def allocated_bytes(cache: Any) -> int:
    """Bytes of the storages behind the cache, each once, capacity included."""
    seen: dict[int, int] = {}
    for t, _ in _tensors(cache):
        ptr, n = _storage(t)
        seen[ptr] = n
    return sum(seen.values())


def _snapshot(cache: Any) -> dict[int, tuple[int, Any]]:
    """id of each tensor's base (the tensor a view was taken from) → (logical bytes of the
    cache's tensors on it, a weak reference to that base). Identity, not the data pointer: a
    freed tensor's address is often reused at once by the next one, which is still a copy."""
    out: dict[int, tuple[int, Any]] = {}
    for t, base in _tensors(cache):
        n, ref = out.get(id(base), (0, None))
        out[id(base)] = (n + t.numel() * t.element_size(), ref or weakref.ref(base))
    return out


def _self_counted(cache: Any) -> tuple[dict[int, int], Any]:
    """The cache's layers that count their own writes (an int ``bytes_written``: the contiguous
    buffer, whose compactions move rows while the filled length shrinks, so nothing could be
    inferred from shapes) as {id: bytes so far}, and the rest of the cache, whose writes are
    inferred."""
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list):
        return {}, cache
    own = {id(lay): lay.bytes_written for lay in layers
           if isinstance(getattr(lay, "bytes_written", None), int)}
    if not own:
        return {}, cache
    return own, [lay for lay in layers if id(lay) not in own]


class CopyMeter:
    """Bytes written into a cache's storages, step by step (see the module docstring); a layer
    that counts its own writes (``bytes_written``) is read instead of inferred."""

    def __init__(self) -> None:
        self.prev: dict[int, tuple[int, Any]] = {}
        self.prev_counted: dict[int, int] = {}
        self.written = 0      # bytes written over the steps counted
        self.steps = 0
        self.seconds = 0.0    # the meter's own time (left out of the timings)
        self.peak_allocated = 0

    def start(self, cache: Any) -> None:
        """The state after prefill: later steps are compared against it."""
        t0 = time.perf_counter()
        self.prev_counted, rest = _self_counted(cache)
        self.prev = _snapshot(rest)
        self.peak_allocated = max(self.peak_allocated, allocated_bytes(cache))
        self.seconds += time.perf_counter() - t0

    def step(self, cache: Any) -> None:
        t0 = time.perf_counter()
        counted, rest = _self_counted(cache)
        self.written += sum(n - self.prev_counted.get(k, 0) for k, n in counted.items())
        self.prev_counted = counted
        now = _snapshot(rest)
        for key, (n, ref) in now.items():
            old = self.prev.get(key)
            same = old is not None and old[1]() is ref()
            self.written += max(0, n - old[0]) if same else n
        self.prev = now
        self.steps += 1
        self.seconds += time.perf_counter() - t0

    def per_token(self) -> Optional[float]:
        return self.written / self.steps if self.steps else None


_STATUS = "/proc/self/status"


def _status_kib(key: str) -> Optional[int]:
    try:
        with open(_STATUS) as fh:
            m = re.search(rf"^{key}:\s+(\d+) kB", fh.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _trim_heap() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class HighWater:
    """Peak memory of a block over the state at its start (bytes; None where unmeasurable)."""

    def __init__(self, device: Any) -> None:
        self.cuda = getattr(device, "type", str(device)) == "cuda"
        self.delta: Optional[int] = None
        self.source = "cuda_max_memory_allocated" if self.cuda else "vmhwm_minus_rss"
        self._before = 0
        self._reset_ok = False

    def __enter__(self) -> "HighWater":
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._before = int(torch.cuda.memory_allocated())
            return self
        _trim_heap()
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # resets VmHWM to the current RSS
            self._reset_ok = True
        except OSError:
            self._reset_ok = False
        rss = _status_kib("VmRSS")
        self._before = (rss or 0) * 1024
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.delta = int(torch.cuda.max_memory_allocated()) - self._before
            return
        hwm = _status_kib("VmHWM")
        if self._reset_ok and hwm is not None and self._before:
            self.delta = max(0, hwm * 1024 - self._before)


__all__ = ["CopyMeter", "HighWater", "allocated_bytes"]
