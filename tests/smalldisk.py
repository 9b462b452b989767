"""A real full disk for tests: a small tmpfs mounted by the test (root only; the test is skipped
when not root or when the mount is refused), filling it to the last byte, and files whose mode
binds even the root user (a child without CAP_DAC_OVERRIDE)."""
from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


@contextmanager
def small_disk(folder: Path, size: str = "512k") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` on ``folder`` (created) for the block's duration."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte; returns the filler (delete = free)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 16, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def free_pages(filler: Path, pages: int = 1) -> None:
    """Give back ``pages`` pages of a :func:`fill`ed file system (the filler is page-aligned:
    it was written until the last byte was refused)."""
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - pages * os.sysconf("SC_PAGE_SIZE")))


def no_dac_override() -> list[str]:
    """Command prefix that runs a child without the capability to ignore file modes: as root
    (the tests' container) mode 444 and 000 are otherwise no obstacle. Empty when not root
    (the modes already bind); skips the test when ``setpriv`` is missing."""
    if os.geteuid() != 0:
        return []
    import shutil

    tool = shutil.which("setpriv")
    if tool is None:
        pytest.skip("dropping a capability needs setpriv (util-linux)")
    caps = "-dac_override,-dac_read_search"
    return [tool, f"--inh-caps={caps}", f"--bounding-set={caps}"]
