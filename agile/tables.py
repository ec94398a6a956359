"""Comment tables in and out: CSV, JSONL and Parquet, streamed in chunks, never loaded whole.

Light on purpose (pandas and pyarrow, no torch or keras): the producer imports it.
Ids are read as text exactly as written (`0012` stays `0012`, a missing id is an
empty string, never `nan` or `12.0`). Every problem with a file becomes one
`TableError` that names the file and the row (0-based, as in the output), line
or byte offset, or column. Output files appear whole or not at all: rows go to a
temporary file beside the target, renamed into place by `close()`.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import operator
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = ("csv", "jsonl", "parquet")
BLOCK = 1 << 20
DELIMITERS = ",;\t|"  # what sniff_delimiter chooses from
SNIFF_CHARS = 64 * 1024


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
    """The candidate that splits the sample's records into as many fields as the header, most consistently.

    Each candidate parses a sample of whole records (quotes honoured, any line ends), so a `;` file
    from Excel with CRLF and quoted fields holding `;` or `,` is `;`; csv.Sniffer's character counts
    and quote patterns read such files as `,`. A header of one field under every candidate means `,`.
    """
    with path.open("r", encoding="utf-8", errors="replace", newline="") as f:
        sample = f.read(SNIFF_CHARS)
        whole = not f.read(1)
    best, best_share = ",", -1.0
    for delimiter in DELIMITERS:
        try:
            records = [r for r in csv.reader(io.StringIO(sample, newline=""), delimiter=delimiter) if r]
        except csv.Error:
            continue
        if not whole:
            records = records[:-1]  # the sample may end inside its last record
        if not records or len(records[0]) < 2:
            continue
        rows = records[1:]
        share = sum(len(r) == len(records[0]) for r in rows) / len(rows) if rows else 1.0
        if share > best_share:  # ties go to the earlier candidate
            best, best_share = delimiter, share
    return best


class _Number(str):
    """A JSON number kept as the text it was written as (ids like 0012 or 1e3 stay as written)."""


def _id_text(value, path: Path, row: int, column: str) -> str:
    """An id as written. An array or object is refused: the output's id column is text, so it could
    come back only re-serialised (spacing, key order and numbers like 1.50 not as written), and such
    an id is almost always the wrong column."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        kind = "an object" if isinstance(value, dict) else "an array"
        raise TableError(f"{path}: row {row}, column {column!r}: an id is one value (text, a number, true, "
                         f"false or null), not {kind}; name another id column with --id-column")
    return str(value)


def _text(value, path: Path, row: int, column: str) -> str:
    if isinstance(value, str) and not isinstance(value, _Number):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""  # a missing comment is an empty comment: the worker marks it failed, never skipped
    raise TableError(f"{path}: row {row}, column {column!r}: expected text, got {value!r:.60}")


def _missing(path: Path, column: str, columns, flag: str, delimited: bool) -> TableError:
    """Names the flag that fixes it: --delimiter when a CSV header holds the column behind another delimiter."""
    listed = f"{path}: no column {column!r} (columns: {', '.join(map(str, columns))})"
    for delimiter in DELIMITERS if delimited else ():
        if any(column in (part.strip(' "') for part in str(c).split(delimiter)) for c in columns):
            return TableError(f"{listed}; the header looks split by {delimiter!r}: give --delimiter '{delimiter}'")
    return TableError(f"{listed}; name the column with {flag}")


def locate_bad_utf8(path: Path, fmt: str) -> str:
    """Where the first invalid UTF-8 byte is: row (0-based), line (1-based) and byte offset."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines, reason = 0, 0, "invalid byte"
    with path.open("rb") as f:
        while block := f.read(BLOCK):
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                bad = offset - pending + exc.start
                f.seek(0)
                prefix = f.read(bad)
                lines = prefix.count(b"\n")
                line_start = prefix.rfind(b"\n") + 1
                reason = exc.reason
                break
            offset += len(block)
        else:
            return "somewhere (the decoder failed, but no bad byte was found)"
    text = prefix[:line_start].decode("utf-8")
    if fmt == "csv":
        row = max(0, sum(1 for _ in csv.reader(io.StringIO(text, newline=""))) - 1)  # less the header
    else:
        row = sum(1 for line in text.splitlines() if line.strip())
    return f"row {row} (line {lines + 1}, byte offset {bad}): {reason}"


def _parser_message(exc: Exception) -> str:
    return str(exc).strip().removeprefix("Error tokenizing data. C error: ")


def csv_frames(path: Path, delimiter: str | None = None, chunk_rows: int | None = None) -> Iterator[pd.DataFrame]:
    """A CSV as frames of `chunk_rows` rows (None: one frame), every value the text written, or a TableError.

    pandas takes the first column as the index when the first data row has one field more than the
    header, shifting every column without a word (a later such row is refused). The header and that
    row are read first as plain rows, so that one is refused too, naming its line.
    """
    sep = delimiter or sniff_delimiter(path)
    # dtype object: the parser's own Python strings, as written; `str` (pandas 3: Arrow-backed) costs a
    # conversion to Arrow and back per value, half of reading a dump (bench_scale's producer profile)
    options = {"sep": sep, "dtype": object, "keep_default_na": False, "index_col": False, "encoding": "utf-8",
               "encoding_errors": "strict"}
    start = 0
    try:
        try:
            pd.read_csv(path, header=None, nrows=2, **options)
        except pd.errors.ParserError as exc:
            raise TableError(f"{path}: row 0 has more fields than the header ({_parser_message(exc)}); "
                             f"quote a field that holds {sep!r}") from None
        frames = pd.read_csv(path, chunksize=chunk_rows, **options) if chunk_rows else [pd.read_csv(path, **options)]
        for frame in frames:
            yield frame
            start += len(frame)
    except TableError:
        raise
    except UnicodeDecodeError:
        raise TableError(f"{path}: invalid UTF-8 at {locate_bad_utf8(path, 'csv')}") from None
    except pd.errors.EmptyDataError:
        raise TableError(f"{path}: no header, the file is empty") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise TableError(f"{path}: cannot read as csv after row {start}: {_parser_message(exc)}") from exc


def _csv_chunks(path: Path, text_column: str, id_column: str | None, id_required: bool, chunk_rows: int,
                delimiter: str | None) -> Iterator[Chunk]:
    start = 0
    for frame in csv_frames(path, delimiter, chunk_rows):
        yield _chunk(path, start, frame.columns, lambda c, f=frame: f[c].tolist(), len(frame),
                     text_column, id_column, id_required, delimited=True)
        start += len(frame)


def _parquet_chunks(path: Path, text_column: str, id_column: str | None, id_required: bool,
                    chunk_rows: int) -> Iterator[Chunk]:
    try:
        file = pq.ParquetFile(path)
        names = file.schema_arrow.names
        wanted = [c for c in (text_column, id_column) if c in names]
        start = 0
        for batch in file.iter_batches(batch_size=chunk_rows, columns=wanted or None):
            yield _chunk(path, start, names, lambda c, b=batch: b.column(c).to_pylist(), batch.num_rows,
                         text_column, id_column, id_required)
            start += batch.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise TableError(f"{path}: cannot read as parquet: {exc}") from exc


def _jsonl_chunks(path: Path, text_column: str, id_column: str | None, id_required: bool,
                  chunk_rows: int) -> Iterator[Chunk]:
    """Our own line reader: numbers stay as written, and a bad line is named by row, line and byte.

    A key any row so far had is a column (rows without it have a missing value there).
    """
    start, records, columns, offset = 0, [], None, 0
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            where = f"row {start + len(records)} (line {line_no}, byte offset {offset})"
            offset += len(raw)
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"), parse_int=_Number, parse_float=_Number)
            except UnicodeDecodeError:
                raise TableError(f"{path}: invalid UTF-8 at {locate_bad_utf8(path, 'jsonl')}") from None
            except json.JSONDecodeError as exc:
                raise TableError(f"{path}: not a JSON line at {where}: {exc.msg} (column {exc.colno})") from None
            if not isinstance(record, dict):
                raise TableError(f"{path}: {where} is not a JSON object")
            columns = dict.fromkeys(record) if columns is None else {**columns, **dict.fromkeys(record)}
            records.append(record)
            if len(records) == chunk_rows:
                yield _chunk(path, start, columns, lambda c, r=records: [x.get(c) for x in r], len(records),
                             text_column, id_column, id_required)
                start, records = start + len(records), []
    if records or columns is None:
        yield _chunk(path, start, columns or [], lambda c, r=records: [x.get(c) for x in r], len(records),
                     text_column, id_column, id_required)


def _chunk(path: Path, start: int, columns, column, n: int, text_column: str, id_column: str | None,
           id_required: bool, delimited: bool = False) -> Chunk:
    if text_column not in columns:
        raise _missing(path, text_column, columns, "--text-column", delimited)
    if id_column is not None and id_column not in columns and id_required:
        raise _missing(path, id_column, columns, "--id-column", delimited)
    texts = _as_text(column(text_column), _text, path, start, text_column)
    if id_column is not None and id_column in columns:
        ids = _as_text(column(id_column), _id_text, path, start, id_column)
    else:
        ids = list(map(str, range(start, start + n)))
    return Chunk(start=start, ids=ids, texts=texts)


def _as_text(values: list, convert, path: Path, start: int, column: str) -> list[str]:
    """A column's values as text: as they are when every one is already a plain string (every CSV
    column, most others: one C-level pass), else each through `convert`."""
    if set(map(type, values)) <= {str}:
        return values
    return [convert(v, path, start + i, column) for i, v in enumerate(values)]


def read_chunks(
    path: str | Path,
    text_column: str = "text",
    id_column: str | None = "id",
    chunk_rows: int = 10_000,
    fmt: str | None = None,
    delimiter: str | None = None,
    id_required: bool = False,
) -> Iterator[Chunk]:
    """Yield the file's rows in chunks. Without an id column (and not `id_required`) ids are row numbers."""
    path = Path(path)
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    fmt = table_format(path, fmt)
    if fmt == "csv":
        yield from _csv_chunks(path, text_column, id_column, id_required, chunk_rows, delimiter)
    elif fmt == "jsonl":
        yield from _jsonl_chunks(path, text_column, id_column, id_required, chunk_rows)
    else:
        yield from _parquet_chunks(path, text_column, id_column, id_required, chunk_rows)


def partial_path(path: Path) -> Path:
    """Where rows written before an error are kept: `scores.partial.csv` beside `scores.csv`."""
    return path.with_name(f"{path.stem}.partial{path.suffix}")


def _remove_stale_work(path: Path) -> None:
    """Drop temporary files a killed writer of `path` left (their process is gone)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        pid = stale.name[len(path.name) + 2:-len(".tmp")]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except PermissionError:
            pass


class TableWriter:
    """Append rows (dicts with the same keys) to CSV, JSONL or Parquet; `close()` puts the file in place.

    Rows go to a hidden temporary file beside `path`; `close()` renames it over
    `path` in one step, so an existing output is never emptied or half-written.
    `abort()` drops the temporary file (or keeps it as `partial_path`).
    """

    def __init__(self, path: str | Path | TextIO, fmt: str | None = None, schema: pa.Schema | None = None):
        self._schema = schema
        self._csv = None  # a csv.writer once the first write names the columns
        self._columns: list[str] = []
        self._parquet: pq.ParquetWriter | None = None
        self.rows = 0
        if not isinstance(path, (str, Path)):  # an open text stream, e.g. stdout
            self.path, self.fmt, self._file, self.work = Path("<stream>"), fmt or "csv", path, None
            return
        self.path, self.fmt = Path(path), table_format(path, fmt)
        if not self.path.parent.is_dir():
            raise TableError(f"{self.path}: directory {self.path.parent} does not exist")
        _remove_stale_work(self.path)
        self.work = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self._file = None if self.fmt == "parquet" else self.work.open("w", encoding="utf-8", newline="")
        except OSError as exc:
            raise TableError(f"{self.path}: cannot write ({exc.strerror})") from exc

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        if self.fmt == "csv":
            if self._csv is None:
                self._columns = list(rows[0])
                one = self._columns[0]
                self._csv = csv.writer(self._file)
                self._values = (operator.itemgetter(*self._columns) if len(self._columns) > 1
                                else lambda row: (row[one],))
                self._csv.writerow(self._columns)
            # The header's columns, in its order, from every row: one C call per row, not DictWriter's
            # per-row Python; a row with other keys is refused as DictWriter would refuse it.
            try:
                if any(n != len(self._columns) for n in map(len, rows)):
                    raise KeyError
                values = list(map(self._values, rows))
            except KeyError:
                raise ValueError(f"{self.path}: every row must have the columns {self._columns}") from None
            self._csv.writerows(values)
        elif self.fmt == "jsonl":
            self._file.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        else:
            table = pa.Table.from_pylist(rows, schema=self._schema)
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.work, table.schema)
            self._parquet.write_table(table.cast(self._parquet.schema))
        self.rows += len(rows)

    def write_columns(self, columns: dict[str, list]) -> None:
        """Append rows given as columns (name -> one value per row), the same names in every call:
        one C call per batch for CSV and Parquet, no Python per row."""
        n = len(next(iter(columns.values()), ()))
        if not n:
            return
        names = list(columns)
        if (self._columns and names != self._columns) or any(len(c) != n for c in columns.values()):
            raise ValueError(f"{self.path}: every write must have the columns {self._columns or names}, "
                             "each as long as the others")
        self._columns = names
        if self.fmt == "csv":
            if self._csv is None:
                self._csv = csv.writer(self._file)
                self._csv.writerow(names)
            self._csv.writerows(zip(*columns.values(), strict=True))
        elif self.fmt == "jsonl":
            self._file.writelines(json.dumps(dict(zip(names, row, strict=True)), ensure_ascii=False) + "\n"
                                  for row in zip(*columns.values(), strict=True))
        else:
            schema = self._schema
            table = (pa.table([columns.get(f.name, [None] * n) for f in schema], schema=schema) if schema
                     else pa.table(columns))
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.work, table.schema)
            self._parquet.write_table(table.cast(self._parquet.schema))
        self.rows += n

    def flush(self) -> None:
        """What is written so far reaches the temporary file (a long write shows its progress)."""
        if self._file is not None:
            self._file.flush()

    def _close_file(self) -> None:
        if self._file is not None and self.work is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        elif self._file is not None:
            self._file.flush()
        if self._parquet is not None:
            self._parquet.close()
        self._file = self._parquet = None

    def close(self) -> None:
        if self.work is None:
            self._close_file()
            return
        if self.fmt == "parquet" and self._parquet is None:  # no rows: still a valid, empty file
            pq.write_table(pa.Table.from_pylist([], schema=self._schema or pa.schema([])), self.work)
        self._close_file()
        if self.work.exists():
            os.replace(self.work, self.path)

    def abort(self, keep: bool = False) -> Path | None:
        """Drop what was written (or keep it as `partial_path`, returned); `path` stays as it was."""
        self._close_file()
        if self.work is None or not self.work.exists():
            return None
        if keep and self.rows:
            os.replace(self.work, partial_path(self.path))
            return partial_path(self.path)
        self.work.unlink()
        return None

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
