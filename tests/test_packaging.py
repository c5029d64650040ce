"""The built wheel holds every module of the package (a wheel once left out melo_cli/tasks/, so
`pip install .` gave a melo that failed on import)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from conftest import ROOT


def test_the_wheel_holds_every_module(tmp_path):
    source = tmp_path / "source"  # a clean copy: a build/ folder left in the checkout would hide a gap
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "melo_cli", source / "melo_cli", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("melo_cli-*.whl")
    held = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    modules = {str(path.relative_to(ROOT)) for path in (ROOT / "melo_cli").rglob("*.py")}
    assert modules - held == set()
    assert {m for m in modules if "/" in m.removeprefix("melo_cli/")}, "the package has sub-packages to check"
