"""What a multi-process launcher was asked for against what it started. ``accelerate launch
--cpu --num_processes N`` (and ``--num_processes N`` on a machine without GPUs) goes through
accelerate's simple launcher, which starts ONE process unless it is given an MPI hostfile, and
says nothing; the run then silently takes N times longer than planned. Torch-free."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

#: set by every accelerate launcher in the environment of the processes it starts
ACCELERATE_MARKS = ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_DYNAMO_BACKEND")


def parent_cmdline(pid: Optional[int] = None) -> list[str]:
    """The command line of this process's parent (the launcher), or [] when unreadable."""
    try:
        raw = Path(f"/proc/{pid or os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def requested_processes(cmdline: Sequence[str]) -> Optional[int]:
    """``--num_processes N`` (or ``--num-processes=N``) from a launcher's command line."""
    for i, a in enumerate(cmdline):
        key, eq, val = a.partition("=")
        if key in ("--num_processes", "--num-processes"):
            v = val if eq else (cmdline[i + 1] if i + 1 < len(cmdline) else "")
            try:
                return int(v)
            except ValueError:
                return None
    return None


def launch_shortfall(env: Mapping[str, str] = os.environ,
                     cmdline: Optional[Sequence[str]] = None) -> Optional[str]:
    """One line when accelerate was asked for more processes than it started, else None."""
    if not any(m in env for m in ACCELERATE_MARKS):
        return None
    try:
        started = int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        started = 1
    asked = requested_processes(parent_cmdline() if cmdline is None else cmdline)
    if asked is None:
        # the simple launcher sets a rendezvous address only when asked for more than one
        if "MASTER_ADDR" not in env or "WORLD_SIZE" in env:
            return None
        asked_s = "more than 1 process"
    elif asked <= started:
        return None
    else:
        asked_s = f"{asked} processes"
    return (f"accelerate launch was asked for {asked_s} but started {started} (with --cpu, or "
            f"without GPUs, it starts one process unless given --mpirun_hostfile); this run uses "
            f"{started}. For N CPU processes: accelerate launch --multi_gpu --num_processes N … "
            f"--device cpu")
