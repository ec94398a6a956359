"""Paths written safely: directories that appear whole or not at all (adapters, reports), and outputs
checked before any work (never a file the run reads, always in a directory that takes a new file)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
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


class OutputError(ValueError):
    """An output that must not or cannot be written; found before any work is done."""


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether `a` and `b` name one file: the same resolved path, or the same inode (a hard link)."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): no inode to share
        return False


def check_output(out: str | Path, reads: Iterable[str | Path | None] = ()) -> Path:
    """`out`, refused (OutputError) when it is a file the run reads, or its directory cannot take a new file.

    Called before any work: an output over its own input would replace the comments with
    their scores (through `x/../in.csv`, a symlink or a hard link as much as by name), and an
    unwritable directory would fail only at the end, after every comment was scored.
    """
    path = Path(out)
    for read in reads:
        if read is not None and same_file(path, read):
            raise OutputError(f"{out}: is {read}, which this run reads; write the output to another file")
    if path.is_dir():
        raise OutputError(f"{out}: is a directory; give a file name")
    for parent in dict.fromkeys((path.parent, path.resolve().parent)):  # beside the link, and beside its target
        if not parent.is_dir():
            raise OutputError(f"{out}: directory {parent} does not exist")
        try:
            fd, probe = tempfile.mkstemp(prefix=".agile-probe-", dir=parent)
        except OSError as exc:
            raise OutputError(f"{out}: cannot write in {parent} ({exc.strerror})") from None
        os.close(fd)
        os.unlink(probe)
    return path


def check_directory_output(out: str | Path, reads: Iterable[str | Path | None]) -> None:
    """Refuse (OutputError) a directory output that is, or holds, something the run reads: it is replaced
    whole (`atomic_directory`), so `agile train --init A -o A` would lose the parent, `-o DIR` a data
    file inside DIR. Names that are not files here (a built-in data split) are passed over."""
    target = Path(out).resolve()
    for read in reads:
        if read is None or not Path(read).exists():
            continue
        path = Path(read).resolve()
        if path == target or target in path.parents:
            raise OutputError(f"{out}: holds {read}, which this run reads, and a new adapter replaces its directory "
                              "whole; write it to another directory")
