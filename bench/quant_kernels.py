"""Which reduced-precision mat-vec is fastest on this CPU, and how wrong is it? Measured before
choosing the kernel of the reduced-precision decode path (issue 15), at the bundled model's
decode shapes (one row of activations), kernels alternating round by round in one run.

    .venv/bin/python bench/quant_kernels.py [--rounds 5] [--iters 200] [--threads N]

Kernels: fp32 ``F.linear``; fp32 split over the threads (the lean path's ``bmm`` over row
blocks); weight-only int8 per output channel (``torch._weight_int8pack_mm``) with fp32 and bf16
activations, whole and split across threads; int4 per group of 32
(``torch._weight_int4pack_mm_for_cpu``) with fp32 and bf16 activations. Error: max |y - y_fp32|
relative to max |y_fp32|. Prints a table; writes bench/results/quant_kernels.json.
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable

from _util import env_record, median_iqr, write_result

import torch
import torch.nn.functional as F

# (N, K) of the bundled model's decode products: fused QKV, O, fused gate/up, down, LM head
SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536),
          "head": (49152, 576)}


def int8_weights(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: w ≈ q * s[:, None]."""
    s = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), s.float()


def int4_weights(w: torch.Tensor, group: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric int4 per group of ``group`` input columns, packed for the CPU kernel."""
    n, k = w.shape
    g = w.reshape(n, k // group, group)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp_min(1e-12)
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32).reshape(n, k)
    # the kernel dequantizes as (q - 8) * scale + zero
    zero = lo + 8 * scale
    packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
    sz = torch.stack([scale.t(), zero.t()], dim=-1).contiguous()  # (K/group, N, 2)
    return packed, sz


def make_kernels(w: torch.Tensor, threads: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    n, k = w.shape
    p = threads
    wv = w.view(p, n // p, k).transpose(1, 2) if n % p == 0 else None
    q8, s8 = int8_weights(w)
    q4, sz4 = int4_weights(w)
    wbf = w.bfloat16()
    kernels: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "fp32 linear": lambda x: F.linear(x, w),
        "int8 w-only, fp32 act": lambda x: torch._weight_int8pack_mm(x, q8, s8),
        "int8 w-only, bf16 act": lambda x: torch._weight_int8pack_mm(x.bfloat16(), q8, s8.bfloat16()).float(),
        "int4 g32, fp32 act": lambda x: torch._weight_int4pack_mm_for_cpu(x, q4, 32, sz4),
        "int4 g32, bf16 act": lambda x: torch._weight_int4pack_mm_for_cpu(x.bfloat16(), q4, 32,
                                                                          sz4.bfloat16()).float(),
        "bf16 linear": lambda x: F.linear(x.bfloat16(), wbf).float(),
    }
    if wv is not None:
        kernels["fp32 split (lean)"] = lambda x: torch.bmm(x.reshape(1, 1, k).expand(p, 1, k), wv).view(1, n)
    return kernels


def time_kernel(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, iters: int) -> float:
    fn(x)
    t = time.perf_counter()
    for _ in range(iters):
        fn(x)
    return (time.perf_counter() - t) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    result: dict[str, Any] = {"env": env_record(), "shapes": {}}
    with torch.inference_mode():
        for name, (n, k) in SHAPES.items():
            w = torch.randn(n, k) * 0.05
            x = torch.randn(1, k)
            ref = F.linear(x, w)
            kernels = make_kernels(w, threads)
            err = {}
            for kn, fn in kernels.items():
                try:
                    y = fn(x)
                    err[kn] = float((y - ref).abs().max() / ref.abs().max())
                except RuntimeError as e:  # a kernel this torch build lacks
                    err[kn] = f"unavailable: {str(e).splitlines()[0][:80]}"
            ok = {kn: fn for kn, fn in kernels.items() if not isinstance(err[kn], str)}
            iters = max(5, args.iters * 576 * 960 // (n * k))
            times: dict[str, list[float]] = {kn: [] for kn in ok}
            for _ in range(args.rounds):
                for kn, fn in ok.items():
                    times[kn].append(time_kernel(fn, x, iters))
            base = median_iqr(times["fp32 split (lean)" if "fp32 split (lean)" in times else "fp32 linear"])[0]
            rows = {}
            for kn in kernels:
                if kn in times:
                    med, lo, hi = median_iqr(times[kn])
                    rows[kn] = {"us": med * 1e6, "iqr_us": [lo * 1e6, hi * 1e6], "vs_lean": base / med,
                                "rel_err": err[kn]}
                else:
                    rows[kn] = {"error": err[kn]}
            result["shapes"][name] = {"n": n, "k": k, "kernels": rows}
            print(f"\n{name} ({n}x{k}), threads {threads}")
            for kn, r in rows.items():
                if "us" in r:
                    print(f"  {kn:24s} {r['us']:9.1f} us  {r['vs_lean']:5.2f}x lean  rel err {r['rel_err']:.1e}")
                else:
                    print(f"  {kn:24s} {r['error']}")
    print("wrote", write_result("quant_kernels", result))


if __name__ == "__main__":
    main()
