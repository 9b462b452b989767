"""Checks of a model folder before anything is allocated: every safetensors header whole and
within its file, ``config.json`` consistent, and the parameter count × dtype within the memory
this machine has. Without them a hostile or mistaken folder ends deep inside ``from_pretrained``:
a header declaring 2⁶² bytes, a config whose sizes do not divide, or a consistent config of
1,000 layers × hidden 589,824 that tries to allocate 4.9 TB.

The parameter count is the larger of two figures: the tensors the weight files declare (what is
read) and the decoder-only transformer the config describes (what ``from_pretrained`` allocates,
missing weights included): embeddings (twice when untied), per layer the attention projections
(query and output at heads × head_dim, key and value at kv_heads × head_dim), a gated MLP
(three hidden × intermediate matrices) and two norms, and the final norm. Biases are left out, so
the figure is a slight underestimate of the models it names.

A GGUF is checked the same way before its one-time conversion: its header's tensor shapes give
the parameter count, and de-quantizing to float32 must fit (check_conversion_memory)."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from engine.errors import ModelLoadError, first_line

#: the share of available memory the weights may take (the rest: activations, the OS)
MODEL_SHARE = 0.9
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int8": 1, "uint8": 1,
               "F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "U8": 1, "I32": 4, "I64": 8,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2}


@dataclass
class Plan:
    """What loading will allocate."""

    params: int
    from_config: int
    from_files: int
    detail: str


def _int(cfg: dict[str, Any], key: str, default: Optional[int] = None) -> int:
    v = cfg.get(key, default)
    if v is None:
        raise ModelLoadError(f"config.json has no {key}")
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ModelLoadError(f"config.json is inconsistent: {key} = {v!r} is not a positive integer")
    return v


def _text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    inner = cfg.get("text_config")
    return inner if isinstance(inner, dict) and "hidden_size" in inner else cfg


def config_params(cfg: dict[str, Any]) -> tuple[int, str]:
    """(parameters the config describes, how they were counted); ModelLoadError when its sizes
    are not positive integers or do not fit together. (0, "") for a config of another shape
    (no hidden_size / layer count): then only the weight files are counted."""
    c = _text_config(cfg)
    if "hidden_size" not in c and "n_embd" not in c:
        return 0, ""
    hidden = _int(c, "hidden_size" if "hidden_size" in c else "n_embd")
    layers = _int(c, "num_hidden_layers" if "num_hidden_layers" in c else "n_layer")
    heads = _int(c, "num_attention_heads" if "num_attention_heads" in c else "n_head")
    kv = _int(c, "num_key_value_heads", heads) if c.get("num_key_value_heads") is not None else heads
    vocab = _int(c, "vocab_size")
    inter = _int(c, "intermediate_size", 4 * hidden) if c.get("intermediate_size") is not None \
        else (c.get("n_inner") if isinstance(c.get("n_inner"), int) and c["n_inner"] > 0 else 4 * hidden)
    head_dim = c.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise ModelLoadError(f"config.json is inconsistent: hidden_size {hidden:,} is not a "
                                 f"multiple of num_attention_heads {heads:,}")
        head_dim = hidden // heads
    else:
        head_dim = _int(c, "head_dim")
    if heads % kv:
        raise ModelLoadError(f"config.json is inconsistent: num_attention_heads {heads:,} is not "
                             f"a multiple of num_key_value_heads {kv:,}")
    tied = bool(c.get("tie_word_embeddings", cfg.get("tie_word_embeddings", True)))
    attn = 2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim
    per_layer = attn + 3 * hidden * inter + 2 * hidden
    total = vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden
    return total, f"{layers:,} layers × hidden {hidden:,}, vocabulary {vocab:,}"


def safetensors_header(path: Path) -> dict[str, Any]:
    """The header of a safetensors file, checked whole and within the file (ModelLoadError)."""
    from engine.integrity import safetensors_problem

    problem = safetensors_problem(path)
    if problem:
        raise ModelLoadError(f"weights file {problem}")
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(n))


def file_shapes(folder: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name → (shape, dtype) of every tensor in the folder's ``*.safetensors`` files."""
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    for w in sorted(folder.glob("*.safetensors")):
        for name, t in safetensors_header(w).items():
            if name == "__metadata__" or not isinstance(t, dict):
                continue
            shape = t.get("shape")
            if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
                raise ModelLoadError(f"weights file {w.name}: tensor {name!r} has no valid shape")
            out[name] = (tuple(shape), str(t.get("dtype", "")))
    return out


def read_config(folder: Path) -> dict[str, Any]:
    from engine.bounded_json import BadJSON, load

    try:
        cfg = load(folder / "config.json", "model config", max_bytes=4 << 20)
    except BadJSON as e:
        raise ModelLoadError(f"config.json unusable: {e}") from None
    if not isinstance(cfg, dict):
        raise ModelLoadError("config.json is not a JSON object")
    return cfg


def plan(folder: Path) -> Plan:
    """The parameter count loading ``folder`` will allocate (ModelLoadError when its files
    or config cannot be right)."""
    import math

    cfg = read_config(folder)
    from_config, detail = config_params(cfg)
    from_files = sum(math.prod(s) for s, _ in file_shapes(folder).values())
    return Plan(max(from_config, from_files), from_config, from_files, detail)


def check_memory(folder: Path, name: str, dtype: str, device: str) -> Plan:
    """ModelLoadError, before any allocation, when the weights cannot fit in memory."""
    from engine.memory import available_bytes, fmt_bytes

    p = plan(folder)
    per = DTYPE_BYTES.get(dtype.replace("torch.", ""), 4)
    need = p.params * per
    have = available_bytes()
    if device.startswith("cuda"):
        try:
            import torch

            have += sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
        except Exception:  # noqa: BLE001 — no CUDA figure: RAM alone
            pass
    if need > have * MODEL_SHARE:
        how = f" ({p.detail})" if p.detail and p.from_config >= p.from_files else ""
        raise ModelLoadError(
            f"model {name} has about {p.params:,} parameters{how}: {fmt_bytes(need)} in {dtype}, "
            f"but {fmt_bytes(have)} of memory is available (the weights may take "
            f"{MODEL_SHARE:.0%})", hint="choose a smaller model or a 16-bit --dtype")
    return p


#: what converting a GGUF holds beyond its fp32 parameters: the converter de-quantizes every
#: tensor into a state dict before the model takes it (a second fp32 copy at the peak) and reads
#: the file through a memory map (its size). Measured on the bundled model (134.5 M parameters,
#: a 94 MiB Q4_1 file): 928 MiB above the imported libraries at the peak, planned here 1,120 MiB.
CONVERSION_FP32_COPIES = 2


def gguf_params(path: Path) -> tuple[int, int]:
    """(parameters, tensors) a GGUF's header declares, from the tensor shapes alone (the gguf
    package's reader memory-maps the file; no tensor data is read). ModelLoadError when the
    header cannot be read."""
    import math

    try:
        from gguf import GGUFReader

        shapes = [tuple(int(d) for d in t.shape) for t in GGUFReader(str(path)).tensors]
    except Exception as e:  # noqa: BLE001 — a truncated or hostile header: one error
        first = first_line(str(e))[:200]
        raise ModelLoadError(f"cannot read GGUF {path}: its header is unreadable "
                             f"({type(e).__name__}: {first})") from None
    if any(d < 0 for s in shapes for d in s):
        raise ModelLoadError(f"cannot read GGUF {path}: a tensor has a negative dimension")
    return sum(math.prod(s) for s in shapes), len(shapes)


def check_conversion_memory(path: Path) -> int:
    """ModelLoadError, before the converter reads a tensor, when de-quantizing ``path`` to
    float32 cannot fit: parameters × 4 bytes × CONVERSION_FP32_COPIES plus the file, against
    the share of available memory model loading may take. Returns the parameter count."""
    from engine.memory import available_bytes, fmt_bytes

    params, tensors = gguf_params(path)
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    need = params * 4 * CONVERSION_FP32_COPIES + size
    have = available_bytes()
    if need > have * MODEL_SHARE:
        raise ModelLoadError(
            f"converting {path.name} needs about {fmt_bytes(need)}: {params:,} parameters in "
            f"{tensors:,} tensors de-quantized to float32 (twice at the peak) plus the "
            f"{fmt_bytes(size)} file, but {fmt_bytes(have)} of memory is available (a model may "
            f"take {MODEL_SHARE:.0%})", hint="free memory or pass a model folder in 16 bits")
    return params


def shapes_problem(folder: Path) -> Optional[str]:
    """None when every weight the config describes is in the files with the shape the model
    built from that config has (tied output weights may be absent); else the first mismatch.
    Builds the model on the meta device: no memory is allocated for it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        check_memory(folder, folder.name, "float32", "cpu")
        cfg = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        found = file_shapes(folder)
    except ModelLoadError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 — any failure to build from the config: not adoptable
        return f"config.json unusable ({type(e).__name__}: {first_line(str(e))})"
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for key, t in model.state_dict().items():
        got = found.get(key)
        if got is None:
            if tied and key.endswith("lm_head.weight"):
                continue
            return f"{key} is missing from the weights"
        if got[0] != tuple(t.shape):
            return f"{key} has shape {list(got[0])}, the config says {list(t.shape)}"
    return None
