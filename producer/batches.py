"""Comment dumps cut into numbered batches, the same way every time they are read.

Reading a file twice gives the same batches with the same ids: that is what lets
a producer (or `agile results`, later) find the batches a Redis crash lost and
send exactly those again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from agile.tables import read_chunks


@dataclass
class Batch:
    id: str
    ids: list[str]
    texts: list[str]
    duplicates: int = 0  # rows left out because their id was already in this batch


@dataclass(frozen=True)
class FileSource:
    """A comment file and how to read it; stored in the job so the dump can be re-read."""

    path: str
    text_column: str = "text"
    id_column: str | None = "id"
    fmt: str | None = None

    def rows(self) -> Iterator[tuple[str, str]]:
        """(id, text) per row; a row without an id gets its row number (from 0)."""
        for chunk in read_chunks(self.path, self.text_column, self.id_column, fmt=self.fmt):
            for n, (row_id, text) in enumerate(zip(chunk.ids, chunk.texts, strict=True)):
                yield row_id or str(chunk.start + n), text

    def to_meta(self) -> dict[str, str]:
        return {f"source_{k}": v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_meta(cls, meta: dict[str, str]) -> FileSource | None:
        if "source_path" not in meta:
            return None
        return cls(meta["source_path"], meta.get("source_text_column", "text"),
                   meta.get("source_id_column"), meta.get("source_fmt"))

    @classmethod
    def of(cls, path: str | Path, text_column: str = "text", id_column: str | None = "id",
           fmt: str | None = None) -> FileSource:
        return cls(str(Path(path).resolve()), text_column, id_column, fmt)


def make_batches(rows: Iterable[tuple[str, str]], batch_size: int) -> Iterator[Batch]:
    """Consecutive rows in batches of `batch_size`, numbered b0, b1, ...

    Scores are keyed by id, so a second row with an id already in the batch is
    left out (and counted) rather than failing the whole batch.
    """
    batch = Batch("b0", [], [])
    seen: set[str] = set()
    number = 0
    for row_id, text in rows:
        if row_id in seen:
            batch.duplicates += 1
            continue
        seen.add(row_id)
        batch.ids.append(row_id)
        batch.texts.append(text)
        if len(batch.ids) == batch_size:
            yield batch
            number += 1
            batch, seen = Batch(f"b{number}", [], []), set()
    if batch.ids:
        yield batch
