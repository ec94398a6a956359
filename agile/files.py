"""Directories that appear whole or not at all (adapters, reports): written aside, then renamed."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty work directory beside `path`; on success it replaces `path` in one rename.

    An error inside the block leaves `path` as it was (absent, or the previous version).
    Raises OSError naming `path` when its parent cannot take a new directory.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=parent))
    except OSError as exc:
        raise OSError(f"{path}: cannot write there ({exc.strerror})") from exc
    try:
        umask = os.umask(0)
        os.umask(umask)
        work.chmod(0o777 & ~umask)  # mkdtemp makes it private; these are shared like any directory
        yield work
        for written in work.rglob("*"):  # some writers (safetensors) create files 0600
            if written.is_file():
                written.chmod(0o666 & ~umask)
        if path.exists():
            shutil.rmtree(path)
        os.replace(work, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
