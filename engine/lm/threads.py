"""How many intra-op threads torch runs with: ``--threads N`` when given, else a default that
does not oversubscribe the machine.

Why it matters: torch's own default is one thread per physical core *per process*. Two processes
started by a launcher (``accelerate launch`` / torchrun) on a 2-core machine would then run four
threads on two cores; on a shared machine under load, threads that wait for each other spin, and
a model ran 6–10× slower with torch's default than with one thread. The thread count also changes
the order in which some reductions add up, so a run is bit-for-bit reproducible across process
counts only when every process uses the same number of threads (1 process × 2 threads and
2 processes × 1 thread can differ in the last digits of a score).

The default: the cores this process may use (physical cores, within its CPU affinity) divided by
the processes on this machine — ``LOCAL_WORLD_SIZE``, which torchrun and ``accelerate launch``
set for each rank (or an MPI launcher's local size) — and never more than the cores the machine
has free (its one-minute load average subtracted, at least one): on a busy shared machine two
threads of one process spin against the other jobs (measured here at load ≈ 19 on 2 cores: 4
rows took 679 s with 2 threads, 62 s with 1). A single process not started by a launcher
follows ``OMP_NUM_THREADS`` when it is set. For runs that must be bit-identical across machines
or loads, give ``--threads`` (the count in use is printed on the model line)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

#: the variables launchers set for the number of processes on this machine
LOCAL_SIZE_VARS = ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE",
                   "MV2_COMM_WORLD_LOCAL_SIZE")


@dataclass(frozen=True)
class ThreadPlan:
    threads: int
    why: str            # shown beside the model line: how the count was chosen


def _int(v: Optional[str]) -> Optional[int]:
    try:
        n = int(str(v).strip())
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def cores() -> int:
    """Cores this process may use: physical cores (hyper-threads add little to matmuls), never
    more than the CPUs in its affinity mask (a container or ``taskset`` may allow fewer)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or allowed
    except Exception:  # noqa: BLE001 - psutil is a dependency; a sandbox may hide /sys
        physical = allowed
    return max(1, min(allowed, physical))


def local_processes(env: Mapping[str, str] = os.environ) -> int:
    """Processes of this run on this machine (1 unless a launcher says otherwise)."""
    for var in LOCAL_SIZE_VARS:
        n = _int(env.get(var))
        if n is not None:
            return n
    return 1


def load_average() -> float:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def plan(requested: Optional[int] = None, env: Mapping[str, str] = os.environ,
         n_cores: Optional[int] = None, load: Optional[float] = None) -> ThreadPlan:
    """The thread count to use and why (see the module docstring)."""
    if requested is not None:
        return ThreadPlan(int(requested), "--threads")
    c = cores() if n_cores is None else n_cores
    local = local_processes(env)
    if local <= 1:
        omp = _int(env.get("OMP_NUM_THREADS"))
        if omp is not None:
            return ThreadPlan(omp, "OMP_NUM_THREADS")
    share = max(1, c // local)
    busy = load_average() if load is None else load
    free = max(1, int(c - busy + 0.5))
    why = f"{c} cores" + (f" / {local} local processes" if local > 1 else "")
    if free < share:
        return ThreadPlan(free, f"{why}, load {busy:.1f}")
    return ThreadPlan(share, why)


_requested: Optional[int] = None


def request(n: Optional[int]) -> None:
    """Remember ``--threads`` (torch-free: the command line is read before torch is imported);
    :func:`apply` uses it when the model loads."""
    global _requested
    _requested = None if n is None else int(n)


def apply(n: Optional[int] = None) -> ThreadPlan:
    """Set torch's intra-op thread count to ``n``, else the requested one, else the default."""
    import torch

    p = plan(n if n is not None else _requested)
    if torch.get_num_threads() != p.threads:
        torch.set_num_threads(p.threads)
    return p
