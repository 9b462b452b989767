"""How much memory this machine has free now, and bytes written for people. A leaf module: the
model loader's pre-allocation check (engine/lm/preflight.py) and the job budgets
(engine/budget.py) read the same figure."""
from __future__ import annotations

import os


def available_bytes() -> int:
    """Memory a new allocation can get now (psutil's ``available``; /proc/meminfo fallback)."""
    override = os.environ.get("TOKENFORGE_MEMORY_BYTES")  # tests and constrained containers
    if override and override.isdigit():
        return int(override)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil is a dependency
        try:
            with open("/proc/meminfo", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    return 4 << 30


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover
