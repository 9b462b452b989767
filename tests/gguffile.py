"""Small GGUF files written by the gguf package itself (float32 tensors of given shapes), for the
tests of what the program does with a GGUF's header."""
from __future__ import annotations

from pathlib import Path

import numpy as np

SHAPES = {"token_embd.weight": (64, 96), "blk.0.attn_q.weight": (96, 96), "output_norm.weight": (96,)}
PARAMS = 64 * 96 + 96 * 96 + 96


def write_gguf(path: Path, shapes: dict[str, tuple[int, ...]] = SHAPES) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    for name, shape in shapes.items():
        w.add_tensor(name, np.zeros(shape, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
