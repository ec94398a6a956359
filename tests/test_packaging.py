"""The project installs as one top-level package, `agile`, whatever folders the repository keeps."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.redis  # builds and installs a wheel in pip processes

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "requirements.txt", "agile", "cli", "producer", "serve", "trainer", "worker",
           "adapters")


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
    shipped = sorted(p.name for p in (ROOT / "adapters").iterdir() if (p / "adapter.json").is_file())
    assert shipped, "no shipped adapters in the checkout"
    for name in shipped:  # what serving needs, not the reports
        assert f"agile/shipped/{name}/adapter.json" in names and f"agile/shipped/{name}/lora.safetensors" in names
    assert not [n for n in names if "/report/" in n]

    # Installed from the wheel, away from the checkout, `ethos-hate` resolves inside the install.
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); from agile.adapters import resolve_adapter; "
             f"print(*(resolve_adapter(n) for n in {shipped!r}))")
    out = subprocess.run([sys.executable, "-c", probe, str(site)], cwd=tmp_path, check=True, capture_output=True,
                         text=True).stdout.split()
    assert out == [str((site / "agile" / "shipped" / n).resolve()) for n in shipped], out
