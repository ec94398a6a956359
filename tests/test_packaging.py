"""The project installs as one top-level package, `agile`, whatever folders the repository keeps."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "requirements.txt", "agile", "cli", "producer", "serve", "trainer", "worker")


def test_the_wheel_installs_agile_alone(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:  # a copy, so the build leaves nothing in the checkout
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if ".dist-info/" not in n}
    assert top == {"agile"}, top
    for module in ("agile/wire.py", "agile/cli/main.py", "agile/worker/tasks.py", "agile/producer/jobs.py",
                   "agile/serve/app.py", "agile/trainer/train.py"):
        assert module in names, module
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "agile = agile.cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()
