"""Every model available offline, for the model picker: the bundled GGUF, models already
converted into ``cache/models/``, causal LMs in the local Hugging Face hub cache (read from its
folder layout — ``models--ORG--NAME/snapshots/REV`` — never the network), and directories or
``.gguf`` files named in the config's ``model_dirs``.

For each: architecture, parameter count and dtype (from the safetensors headers: exact and
cheap, no weights read), size on disk, and whether the lean forward supports it (decided by
``engine.lm.fastpath.unsupported_reason`` on a weightless meta-device instance of the config,
so the answer is the one a real load would get)."""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

from engine.paths import cache_root
from engine.bounded_json import loads as bounded_loads  # bounded depth: never a RecursionError
from engine.bounded_json import read_text as bounded_read_text  # regular files only, bounded

CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


@dataclass
class ModelEntry:
    spec: str          # what to load: "default", a directory, a .gguf file
    name: str          # what to show
    source: str        # bundled, converted, hf-cache, config
    path: str
    architecture: str = "?"
    model_type: str = "?"
    params: Optional[int] = None
    dtype: str = "?"
    size_bytes: int = 0
    lean: Optional[bool] = None
    lean_why: str = ""

    def params_text(self) -> str:
        if not self.params:
            return "?"
        p = self.params
        return f"{p / 1e9:.2f} B" if p >= 1e9 else f"{p / 1e6:.1f} M" if p >= 1e6 else f"{p / 1e3:.0f} K"


def hub_cache() -> Path:
    """The local Hugging Face hub cache folder, as huggingface_hub resolves it (env only)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _safetensors_facts(folder: Path) -> tuple[Optional[int], str]:
    """(parameter count, dominant dtype) from the headers of the folder's safetensors files."""
    total, dtypes = 0, {}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None, "?"
    for f in files:
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n > 100 << 20:
                    return None, "?"
                header = bounded_loads(fh.read(n), f.name)
        except (OSError, ValueError, struct.error):
            return None, "?"
        for key, t in header.items():
            if key == "__metadata__":
                continue
            count = 1
            for d in t.get("shape", []):
                count *= int(d)
            total += count
            dtypes[t.get("dtype", "?")] = dtypes.get(t.get("dtype", "?"), 0) + count
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F8_E4M3": "float8"}
    top = max(dtypes, key=dtypes.get) if dtypes else "?"
    return total, names.get(top, top.lower())


def _size(folder: Path) -> int:
    seen, total = set(), 0
    for p in folder.rglob("*"):
        try:
            real = p.resolve()
            if real.is_file() and real not in seen:
                seen.add(real)
                total += real.stat().st_size
        except OSError:
            continue
    return total


def lean_support(config: dict[str, Any]) -> tuple[Optional[bool], str]:
    """Whether the lean forward would take a model with this config (meta device: no memory)."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        from engine.lm.fastpath import unsupported_reason

        cfg = AutoConfig.for_model(**config)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        why = unsupported_reason(model)
        return why is None, why or ""
    except Exception as e:  # an architecture transformers cannot build here
        return None, f"unknown ({type(e).__name__})"


def describe_dir(folder: Path, spec: str, name: str, source: str) -> Optional[ModelEntry]:
    """An entry for a model directory, or None when it is not a causal LM."""
    try:
        config = bounded_loads(bounded_read_text(folder / "config.json", "model config", 16 << 20),
                               "config.json")
    except (OSError, ValueError):
        return None
    archs = config.get("architectures") or []
    if archs and not any(a.endswith(CAUSAL_SUFFIXES) for a in archs):
        return None
    params, dtype = _safetensors_facts(folder)
    e = ModelEntry(spec=spec, name=name, source=source, path=str(folder),
                   architecture=(archs[0] if archs else "?"), model_type=config.get("model_type", "?"),
                   params=params, dtype=dtype if dtype != "?" else str(config.get("torch_dtype") or
                                                                     config.get("dtype") or "?"),
                   size_bytes=_size(folder))
    if "model_type" in config:
        e.lean, e.lean_why = lean_support(config)
    return e


def _hub_entries(root: Path) -> Iterable[ModelEntry]:
    if not root.is_dir():
        return
    for repo in sorted(root.glob("models--*")):
        parts = repo.name.split("--")[1:]
        repo_id = "/".join(parts)
        snaps = repo / "snapshots"
        rev = ""
        try:
            rev = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
        except OSError:
            pass
        cands = [snaps / rev] if rev and (snaps / rev).is_dir() else sorted(snaps.glob("*"))
        for snap in cands:
            if (snap / "config.json").exists():
                e = describe_dir(snap, str(snap), repo_id, "hf-cache")
                if e is not None:
                    yield e
                break


def _gguf_entry(p: Path, source: str, spec: Optional[str] = None, name: Optional[str] = None,
                seen: Optional[set[Path]] = None) -> ModelEntry:
    """One entry per GGUF: once converted, the facts of its converted folder (parameters,
    architecture, dtype) under the GGUF's own spec and name, and that folder is not listed again
    (``seen`` collects it)."""
    from engine.lm.model import converted_dir

    try:
        d = converted_dir(p)
    except Exception:  # an unreadable GGUF: listed as it is
        d = None
    if d is not None and (d / "config.json").exists():
        e = describe_dir(d, spec or str(p), name or p.stem, source)
        if e is not None:
            if seen is not None:
                seen.add(d.resolve())
            e.path = str(p)
            e.dtype = f"{e.dtype} (converted)"
            return e
    return ModelEntry(spec=spec or str(p), name=name or p.stem, source=source, path=str(p),
                      architecture="GGUF (converted on first load)", dtype="quantized",
                      size_bytes=p.stat().st_size)


def discover(model_dirs: Iterable[Path] = (), *, hub: Optional[Path] = None,
             include_bundled: bool = True) -> list[ModelEntry]:
    """Every model found offline, bundled first. Never touches the network."""
    out: list[ModelEntry] = []
    seen: set[Path] = set()  # converted folders already shown under their GGUF
    if include_bundled:
        try:
            from engine.lm.model import bundled_gguf

            g = bundled_gguf()
            out.append(_gguf_entry(g, "bundled", spec="default", name="SmolLM2-135M-Instruct (bundled)",
                                   seen=seen))
        except Exception:
            pass
    ggufs = []  # the config's GGUFs first, so their converted folders are known
    for root in model_dirs:
        root = Path(root).expanduser()
        files = [root] if root.suffix == ".gguf" else (sorted(root.iterdir()) if root.is_dir() else [])
        ggufs += [_gguf_entry(f, "config", seen=seen) for f in files
                  if f.suffix == ".gguf" and f.is_file()]
    models = cache_root() / "models"
    if models.is_dir():
        for d in sorted(models.iterdir()):
            if d.resolve() in seen:
                continue
            if (d / "config.json").exists():
                e = describe_dir(d, str(d), d.name, "converted")
                if e is not None:
                    out.append(e)
    out.extend(_hub_entries(hub if hub is not None else hub_cache()))
    out.extend(ggufs)
    for root in model_dirs:
        root = Path(root).expanduser()
        if root.suffix == ".gguf":
            continue
        cands = [root] if (root / "config.json").exists() else (sorted(root.iterdir()) if root.is_dir() else [])
        for d in cands:
            if d.is_dir() and (d / "config.json").exists():
                e = describe_dir(d, str(d), d.name, "config")
                if e is not None:
                    out.append(e)
    return out


def fmt_size(n: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"
