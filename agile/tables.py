"""Comment tables in and out: CSV, JSONL and Parquet, streamed in chunks, never loaded whole.

Light on purpose (pandas and pyarrow, no torch or keras): the producer imports it.
Every problem with a file becomes one `TableError` that names the file, and the
row or column when there is one.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = ("csv", "jsonl", "parquet")


class TableError(ValueError):
    """A comment file cannot be read or written as asked."""


@dataclass
class Chunk:
    """Consecutive rows of a comment file: ids (strings) and texts, `start` = first row number."""

    start: int
    ids: list[str]
    texts: list[str]


def table_format(path: str | Path, given: str | None = None) -> str:
    fmt = (given or Path(path).suffix.lstrip(".")).lower()
    fmt = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet", "tsv": "csv"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise TableError(f"{path}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return fmt


def sniff_delimiter(path: Path) -> str:
    with path.open("r", encoding="utf-8", errors="replace", newline="") as f:
        sample = f.read(64 * 1024)
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _frames(path: Path, fmt: str, chunk_rows: int, delimiter: str | None) -> Iterator[pd.DataFrame]:
    if fmt == "csv":
        yield from pd.read_csv(
            path, sep=delimiter or sniff_delimiter(path), chunksize=chunk_rows, dtype=str,
            keep_default_na=False, encoding="utf-8", encoding_errors="strict",
        )
    elif fmt == "jsonl":
        yield from pd.read_json(path, lines=True, chunksize=chunk_rows, dtype=False)
    else:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()


def _text(value, path: Path, row: int, column: str) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""  # a missing comment is an empty comment: scorable, not an error
    raise TableError(f"{path}: row {row}, column {column!r}: expected text, got {value!r:.60}")


def read_chunks(
    path: str | Path,
    text_column: str = "text",
    id_column: str | None = "id",
    chunk_rows: int = 10_000,
    fmt: str | None = None,
    delimiter: str | None = None,
) -> Iterator[Chunk]:
    """Yield the file's rows in chunks. Rows without an id column get their row number (from 0)."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    fmt = table_format(path, fmt)
    start = 0
    try:
        for frame in _frames(path, fmt, chunk_rows, delimiter):
            if text_column not in frame.columns:
                raise TableError(
                    f"{path}: no column {text_column!r} (columns: {', '.join(map(str, frame.columns))}); "
                    "name the text column with --text-column"
                )
            use_ids = id_column is not None and id_column in frame.columns
            texts = [_text(v, path, start + i, text_column) for i, v in enumerate(frame[text_column])]
            if use_ids:
                ids = ["" if v is None else str(v) for v in frame[id_column].tolist()]
            else:
                ids = [str(start + i) for i in range(len(frame))]
            yield Chunk(start=start, ids=ids, texts=texts)
            start += len(frame)
    except UnicodeDecodeError as exc:
        raise TableError(f"{path}: invalid UTF-8 after row {start} ({exc.reason})") from exc
    except (pd.errors.ParserError, pa.ArrowInvalid, ValueError) as exc:
        if isinstance(exc, TableError):
            raise
        raise TableError(f"{path}: cannot read as {fmt} after row {start}: {exc}") from exc


class TableWriter:
    """Append rows (dicts with the same keys) to CSV, JSONL or Parquet; `close()` finishes the file."""

    def __init__(self, path: str | Path | TextIO, fmt: str | None = None):
        if not isinstance(path, (str, Path)):  # an open text stream, e.g. stdout
            self.path, self.fmt, self._file, self._owned = Path("<stream>"), fmt or "csv", path, False
        else:
            self.path, self.fmt, self._owned = Path(path), table_format(path, fmt), True
            if not self.path.parent.is_dir():
                raise TableError(f"{self.path}: directory {self.path.parent} does not exist")
            try:
                self._file = (
                    None if self.fmt == "parquet" else self.path.open("w", encoding="utf-8", newline="")
                )
            except OSError as exc:
                raise TableError(f"{self.path}: cannot write ({exc.strerror})") from exc
        self._csv: csv.DictWriter | None = None
        self._parquet: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        if self.fmt == "csv":
            if self._csv is None:
                self._csv = csv.DictWriter(self._file, fieldnames=list(rows[0]))
                self._csv.writeheader()
            self._csv.writerows(rows)
        elif self.fmt == "jsonl":
            self._file.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        else:
            table = pa.Table.from_pylist(rows)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, table.schema)
            self._parquet.write_table(table.cast(self._parquet.schema))
        self.rows += len(rows)

    def close(self) -> None:
        if self._file is not None and self._owned:
            self._file.close()
        elif self._file is not None:
            self._file.flush()
        if self._parquet is not None:
            self._parquet.close()

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
