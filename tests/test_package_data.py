"""Every data file the packages read ships in a wheel: a non-editable install (pip install .)
keeps only what pyproject's package-data names, so a file outside its patterns (the phrase-merge
domain material, the decode kernel's C source) would be missing there and nowhere else."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_data_file_in_the_packages_is_named_by_package_data():
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for pkg in ("app", "engine"):
        base = ROOT / pkg
        shipped = {p for pat in data.get(pkg, []) for p in base.glob(pat)}
        on_disk = {p for p in base.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
                   and "__pycache__" not in p.parts}
        assert on_disk, pkg
        missing = sorted(str(p.relative_to(ROOT)) for p in on_disk - shipped)
        assert not missing, f"not in [tool.setuptools.package-data] {pkg}: {missing}"
