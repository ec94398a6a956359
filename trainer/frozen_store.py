"""The frozen blocks' output for token rows, kept on disk from one `agile train` run to the next.

With LoRA on the last blocks only (`--lora-blocks N`, `--quick`), what the blocks below give a token row
never changes: it depends on the base model's weights and the row's tokens alone. A round of the agile
loop trains on its parent's rows again, so it reads their hidden states back instead of running those
blocks over them once more. One safetensors file (no pickle) per base model, frozen-block count and
prompt head, under AGILE_HOME/frozen/; each run rewrites it, atomically, with the rows it used, so it
holds about one round's rows (rows x tokens x hidden floats: ETHOS's 800 rows on the 270M, 58 MiB).
`agile suggest` keeps its pool's rows the same way, in a file of their own (`kind="pool"`) capped in
size: its next round, with the next policy of the same layout, runs the LoRA'd blocks alone, and
`agile train` reads the rows just labelled from it (`also="pool"`), so a round computes none.
A row's name is its tokens' hash and how it was computed (exactly, or under bfloat16 autocast: see
`LeanLabelLoss._hidden_below` for which runs take which). A file that cannot be read, or was written
for another model, is left out and computed again.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


def row_key(tokens: list[int]) -> str:
    """A token row's name in the store (the prefix's tokens included)."""
    return hashlib.blake2b(np.asarray(tokens, dtype=np.int64).tobytes(), digest_size=16).hexdigest()


POOL = "pool"  # the kind of file `agile suggest` keeps, beside `agile train`'s ("")


class FrozenStore:
    """Hidden states after the frozen blocks, by token row: those of the last run, and this run's."""

    def __init__(self, directory: Path, model_checksum: str, frozen: int, prefix: list[int], kind: str = "",
                 max_bytes: int | None = None, also: str | None = None):
        name = hashlib.blake2b(f"{model_checksum}/{frozen}/{row_key(prefix)}".encode(), digest_size=12).hexdigest()
        self.path = _file(directory, name, kind)
        self.meta = {"model": model_checksum, "frozen": str(frozen)}
        self.used: dict[str, torch.Tensor] = {}  # what this run read or computed: the next file
        self.read = self.computed = self.left_out = 0  # left out: over max_bytes, not kept for the next run
        self.max_bytes, self._bytes = max_bytes, 0
        self._own = self._open(self.path)
        self._also = self._open(_file(directory, name, also)) if also else None  # read row by row

    def _open(self, path: Path):
        """The file's reader if it holds this model's rows, else None."""
        from safetensors import safe_open

        if not path.is_file():
            return None
        try:
            handle = safe_open(str(path), framework="pt")
            if handle.metadata() != self.meta:
                return None
            return handle, set(handle.keys())
        except Exception as exc:  # a truncated or foreign file: compute again, never trust it
            log.warning("frozen-block store %s unreadable (%s); computing its rows again", path, exc)
            return None

    def get(self, key: str) -> torch.Tensor | None:
        for source in (self._own, self._also):
            if source is None or key not in source[1]:
                continue
            try:
                found = source[0].get_tensor(key)
            except Exception as exc:  # a file changed under the reader: this row is computed
                log.warning("frozen-block store row unreadable (%s); computing it again", exc)
                continue
            self._keep(key, found)
            self.read += 1
            return found
        return None

    def put(self, key: str, hidden: torch.Tensor) -> None:
        self._keep(key, hidden.detach().to("cpu", torch.float32).contiguous())
        self.computed += 1

    def _keep(self, key: str, hidden: torch.Tensor) -> None:
        size = hidden.numel() * hidden.element_size()
        if key in self.used or (self.max_bytes is not None and self._bytes + size > self.max_bytes):
            self.left_out += key not in self.used
            return
        self.used[key] = hidden
        self._bytes += size

    def save(self) -> bool:
        """Write the rows this run kept in place of the old file; whether it did (a failure costs the next run
        time and a warning, nothing else). With none kept, the old file goes: its rows are not this run's."""
        from safetensors.torch import save_file

        if not self.used:
            with contextlib.suppress(OSError):
                self.path.unlink(missing_ok=True)
            return False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
            os.close(fd)
            try:
                save_file(self.used, tmp, metadata=self.meta)
                os.replace(tmp, self.path)
            finally:
                Path(tmp).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not keep the frozen blocks' output in %s (%s)", self.path, exc)
            return False
        return True

    def saved(self) -> str:
        """Save, and say where the rows went (for the line a command prints)."""
        if self.save():
            return f"kept in {self.path}"
        return "none kept" if not self.used else "not kept: see the warning above"


def _file(directory: Path, name: str, kind: str) -> Path:
    return directory / f"{name}{'.' + kind if kind else ''}.safetensors"
