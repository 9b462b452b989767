"""The lean forward's batch-1 decode step as one compiled C function (``native/decode_step.c``):
the whole layer loop in one OpenMP parallel region instead of ~700 torch ops, so a step reads the
weights closer to the machine's bandwidth (docs/native-decode.md).

The kernel is compiled on first use (per cache folder) with the system C compiler (``cc -O3 -march=native
-fopenmp``: no torch headers, no ninja, ~1 s) into ``cache/native/`` under a name keyed by the
source, the compiler and this CPU, and loaded with ctypes. Its OpenMP runtime is the one torch
already loaded (same ``libgomp.so.1``), so both share one thread pool. Anything that fails — no
compiler, a compile error, a read-only cache, ``TOKENFORGE_NATIVE=0`` — leaves the pure-torch step
of ``fastdecode.py`` in place, with one log line saying why.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Optional

import torch
from torch.autograd.profiler import record_function

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native") / "decode_step.c"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
ENV = "TOKENFORGE_NATIVE"  # "0": never build or use the kernel
PROFILE_NAME = "tokenforge::native_decode_step"  # the kernel's event in a torch profile
_profiling = torch._C._autograd._profiler_enabled

_lock = threading.Lock()
# per cache folder: (the loaded kernel or None, why it is unavailable or None). Keyed so that a
# process pointed at a read-only or broken cache for a while (a test, a --cache flag) is not left
# without the kernel once it is pointed back.
_state: dict[str, tuple[Any, Optional[str]]] = {}


def _cpu_key() -> str:
    """What ``-march=native`` depends on: the CPU's model and flags."""
    try:
        txt = Path("/proc/cpuinfo").read_text(errors="replace")
        lines = [ln for ln in txt.splitlines() if ln.startswith(("model name", "flags"))][:2]
        return "\n".join(lines)
    except OSError:
        return platform.processor() or platform.machine()


def _compiler() -> Optional[str]:
    for name in (os.environ.get("CC") or "", "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(cc: str, dest: Path) -> None:
    """Compile into a temporary file beside ``dest`` and rename it in (never a half-written .so)."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        r = subprocess.run([cc, *FLAGS, str(SOURCE), "-o", str(tmp), "-lm"], capture_output=True,
                           text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"{Path(cc).name} failed: {(r.stderr or r.stdout).strip()[:300]}")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _declare(lib: Any) -> None:
    lib.tf_decode_step.restype = None
    lib.tf_decode_step.argtypes = [ctypes.POINTER(_Model), ctypes.c_int64, ctypes.c_void_p, ctypes.c_int,
                                   ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                   ctypes.c_void_p, ctypes.c_int]
    lib.tf_work_floats.restype = ctypes.c_int64
    lib.tf_work_floats.argtypes = [ctypes.POINTER(_Model), ctypes.c_int, ctypes.c_int]


def library() -> Any:
    """The loaded kernel, or None (see :func:`unavailable_reason`). Built at most once per
    cache folder; concurrent processes building the same file serialise on a lock file."""
    return _get()[0]


def unavailable_reason() -> Optional[str]:
    return _get()[1]


def _get() -> tuple[Any, Optional[str]]:
    from engine.paths import cache_root

    if os.environ.get(ENV, "1").strip() == "0":
        return None, f"{ENV}=0"
    try:
        key = str(cache_root())
    except Exception as e:  # a bad $TOKENFORGE_CACHE: the torch step (loading the model says why)
        return None, f"{type(e).__name__}: {e}"
    with _lock:
        hit = _state.get(key)
        if hit is None:
            try:
                hit = (_load(), None)
            except Exception as e:  # no compiler, compile error, unwritable cache, bad .so: torch step
                hit = (None, f"{type(e).__name__}: {e}")
                log.info("native decode step unavailable (%s); using the torch step", hit[1])
            _state[key] = hit
        return hit


def _load() -> Any:
    from engine.locks import FileLock
    from engine.paths import cache_dir

    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    ver = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), cc, ver, " ".join(FLAGS), _cpu_key()])
                         .encode()).hexdigest()[:16]
    dest = cache_dir("native") / f"decode_step-{key}.so"
    if not dest.exists():
        with FileLock(dest, "the native decode kernel", wait=600):
            if not dest.exists():
                _build(cc, dest)
    lib = ctypes.CDLL(str(dest))
    _declare(lib)
    return lib


class _Model(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n in ("n_layers", "hidden", "inter", "n_heads", "n_kv", "head_dim",
                                             "vocab")] + [
        ("eps", ctypes.c_float), ("scale", ctypes.c_float)] + [
        (n, ctypes.c_void_p) for n in ("embed", "final_norm", "w_head", "b_head")] + [
        (n, ctypes.POINTER(ctypes.c_void_p))
        for n in ("ln1", "ln2", "wqkv", "bqkv", "wo", "bo", "wgu", "bgu", "wd", "bd")]


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


class NativeStep:
    """One forward's weights as the kernel reads them (pointers into the HF tensors, no copy);
    :meth:`run` is one batch-1 decode step. Made by :func:`make_native_step`."""

    def __init__(self, lib: Any, fwd: Any) -> None:
        self.lib = lib
        L0 = fwd.layers[0]
        self._keep: list[Any] = [fwd.embed, fwd.norm, fwd.w_head, fwd.b_head]  # pointed into below
        arrays = {}
        for name, attr in (("ln1", "ln1"), ("ln2", "ln2"), ("wqkv", "wqkv"), ("bqkv", "bqkv"), ("wo", "wo"),
                           ("bo", "bo"), ("wgu", "wgu"), ("bgu", "bgu"), ("wd", "wd"), ("bd", "bd")):
            ts = [getattr(L, attr) for L in fwd.layers]
            self._keep.extend(ts)
            arr = (ctypes.c_void_p * len(ts))(*[_ptr(t) for t in ts])
            self._keep.append(arr)
            arrays[name] = ctypes.cast(arr, ctypes.POINTER(ctypes.c_void_p))
        self.model = _Model(n_layers=fwd.n_layers, hidden=fwd.hidden_size, inter=int(L0.wd.shape[1]),
                            n_heads=fwd.n_heads, n_kv=fwd.n_kv, head_dim=fwd.head_dim, eps=fwd.eps,
                            vocab=int(fwd.w_head.shape[0]), scale=fwd.scale, embed=fwd.embed.data_ptr(),
                            final_norm=fwd.norm.data_ptr(), w_head=fwd.w_head.data_ptr(),
                            b_head=_ptr(fwd.b_head), **arrays)
        self.mref = ctypes.byref(self.model)
        self.hidden = fwd.hidden_size
        self.vocab = int(fwd.w_head.shape[0])
        self.n_embed = int(fwd.embed.shape[0])
        self._work = torch.empty(0, dtype=torch.float32)

    def run(self, ids: torch.Tensor, st: Any, past: int, rot: torch.Tensor, head: bool = False) -> torch.Tensor:
        """One step for ``ids`` (1, 1) after ``past`` positions of store ``st`` (reserved);
        ``rot`` the rotation table's row of this position. Returns the final hidden state
        (1, 1, H), or with ``head`` the exact LM head's logits (1, 1, V) computed in the same
        parallel region; a fresh tensor either way."""
        threads = torch.get_num_threads()
        need = int(self.lib.tf_work_floats(self.mref, past + 1, threads))
        if self._work.numel() < need:
            self._work = torch.empty(max(need, 2 * self._work.numel()), dtype=torch.float32)
        out = torch.empty(1, 1, self.hidden, dtype=torch.float32)
        logits = torch.empty(1, 1, self.vocab, dtype=torch.float32) if head else None
        tok = int(ids.view(-1)[0])
        if not 0 <= tok < self.n_embed:  # the kernel reads the row unchecked; torch's lookup raises this
            raise IndexError(f"token id {tok} is out of range for an embedding of {self.n_embed} rows")
        args = (self.mref, tok, st.kv.data_ptr(), st.cap, past, rot.data_ptr(),
                self._work.data_ptr(), out.data_ptr(), None if logits is None else logits.data_ptr(), threads)
        if _profiling():  # named in a profile (stepprofile.py); ~7 µs, so only then
            with record_function(PROFILE_NAME):
                self.lib.tf_decode_step(*args)
        else:
            self.lib.tf_decode_step(*args)
        return out if logits is None else logits


def make_native_step(fwd: Any) -> Optional[NativeStep]:
    """The kernel for this lean forward, or None where it does not apply: not fp32 on CPU, a
    layer without fused Q/K/V and gate/up, a weight not contiguous, or no kernel."""
    if fwd.dtype != torch.float32 or fwd.device.type != "cpu":
        return None
    for L in fwd.layers:
        if L.wqkv is None or L.wgu is None:
            return None
        ts = [L.ln1, L.ln2, L.wqkv, L.bqkv, L.wo, L.bo, L.wgu, L.bgu, L.wd, L.bd]
        if any(t is not None and (not t.is_contiguous() or t.dtype != torch.float32) for t in ts):
            return None
    extra = [fwd.embed, fwd.norm, fwd.w_head, fwd.b_head]
    if any(t is not None and (not t.is_contiguous() or t.dtype != torch.float32 or t.device.type != "cpu")
           for t in extra) or fwd.head_dim % 2:
        return None
    lib = library()
    return None if lib is None else NativeStep(lib, fwd)
