"""The import name -> folder map (pyproject.toml, README "Layout"): one package, `agile`, and nothing else."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("cli", "producer", "serve", "trainer", "worker")  # imported as agile.<folder>


def test_no_folder_imports_as_a_top_level_module():
    """The repository root is not on sys.path (make test runs bin/pytest, not `python -m pytest`, which would
    put it first): `worker`, `cli`, ... import only as agile.worker, agile.cli."""
    assert ROOT not in {Path(p).resolve() for p in sys.path if p}
    for folder in FOLDERS:
        assert folder not in sys.modules
