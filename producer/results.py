"""A job's scores out of Redis into a CSV, JSONL or Parquet file: one row per input row, in input order.

Workers write one record per batch (its rows' results, in row order). Each page
of records is appended to a spool beside the output and synced to disk before it
is deleted from Redis, so a crash loses nothing: run the same command again and
it carries on from the spool (a record that reached the spool but was not yet
deleted from Redis is not kept twice). While the job runs, the output is written
from the dump (re-read for the ids, exactly as written) and the spool, each batch
as soon as it and every batch before it are in, to a temporary file; once the
last is in, that file is renamed into place and the spool goes. A run cut short
drops its temporary file: the spool holds everything, and the next run writes
the output again from it.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from agile import output
from agile.files import check_output
from agile.output import Results
from agile.producer.jobs import Job, JobError
from agile.producer.source import Batch, SourceChanged
from agile.tables import TableWriter, table_format
from agile.wire import JobKeys

PAGE = 200  # batch records per HSCAN page
BATCH_ID = re.compile(r"^b(\d+)$")


@dataclass
class Totals:
    rows: int = 0
    scored: int = 0
    failed: int = 0
    predictions: Counter = field(default_factory=Counter)  # label -> rows; "failed" -> rows with an error


def record_results(record: dict, n: int) -> Results:
    """A batch record's results for its `n` rows, as columns; records of earlier workers too (a spool
    or a Redis kept over an upgrade): rows of {policy: fields or None} or {"error"}, or of fields alone."""
    if "columns" in record:
        if record.get("n") != n:
            return Results.failed(n, f"the worker returned {record.get('n')} results for {n} rows")
        errors = {int(i): why for i, why in (record.get("errors") or {}).items()}
        return Results.of(n, {name: (c.get("values") or {}, c.get("rows"))
                              for name, c in record["columns"].items()}, errors)
    results = record.get("results")
    if results is None:
        return Results.failed(n, record.get("error") or "the batch was refused")
    if len(results) != n:
        return Results.failed(n, f"the worker returned {len(results)} results for {n} rows")
    if "policies" not in record:
        results = [r if "error" in r else {record.get("policy", ""): r} for r in results]
    errors = {i: r["error"] for i, r in enumerate(results) if "error" in r}
    columns: dict[str, tuple[dict[str, list], list[int]]] = {}
    for name in record.get("policies") or {k for r in results if "error" not in r for k in r}:
        rows = [i for i, r in enumerate(results) if "error" not in r and r.get(name)]
        keys = list(results[rows[0]][name]) if rows else []
        columns[name] = ({k: [results[i][name].get(k) for i in rows] for k in keys}, rows)
    return Results.of(n, columns, errors)


def record_labels(record: dict) -> list[str] | None:
    """A single policy's output names as the worker wrote them (`p_<name>`), if any row was scored."""
    results = record_results(record, record["n"] if "columns" in record else len(record.get("results") or ()))
    for name, fields in results.fields.items():
        if any(results.scored[name]):
            return [k[2:] for k in fields if k.startswith("p_")]
    return None


def record_counts(record: dict) -> tuple[int, int]:
    """(scored, failed) rows of a batch record."""
    if "columns" in record:
        failed = len(record.get("errors") or ())
        return int(record.get("n", 0)) - failed, failed
    results = record.get("results")
    if results is None:
        return 0, int(record.get("n", 0))
    failed = sum(1 for r in results if "error" in r)
    return len(results) - failed, failed


def drain_pages(redis, keys: JobKeys) -> Iterator[list[tuple[str, str]]]:
    """Pages of (batch id, record JSON) now in Redis; a page is deleted once the caller asks for the next."""
    cursor = None
    while cursor != 0:
        cursor, page = redis.hscan(keys.results, cursor or 0, count=PAGE)
        if page:
            yield list(page.items())
            redis.hdel(keys.results, *page)


class Drain:
    """Collects one job's batch records into a spool, then writes the output from it."""

    def __init__(self, job: Job, out: str | Path, fmt: str | None = None, reads: tuple[str, ...] = ()):
        """`reads`: the files the job still reads (its dump); the output may be none of them, nor the spool."""
        self.job = job
        self.out = Path(out).resolve()
        self.fmt = table_format(self.out, fmt)
        self.spool = self.out.parent / f".agile-{job.job_id}.spool"
        check_output(out, (*reads, self.spool))
        self.index: dict[int, tuple[int, int]] = {}  # batch number -> (offset, length) in the spool
        self._out: _Output | None = None  # the output, once `open_output` is called
        self._load()
        self._claim()

    def _load(self) -> None:
        """Index the spool a previous run left, cutting a record a crash left half-written."""
        if not self.spool.is_file():
            return
        keep = 0
        with self.spool.open("rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    self.index[_number(json.loads(line)["batch"])] = (keep, len(line))
                except (ValueError, KeyError, TypeError, AttributeError):
                    break
                keep += len(line)
        with self.spool.open("rb+") as f:
            f.truncate(keep)

    def counts(self) -> dict[str, tuple[int, int]]:
        """(scored, failed) of every batch collected so far, read back from the spool: what a Redis that
        lost the job needs restored (agile.producer.repair), so only then is a record decoded here."""
        with self.spool.open("rb") as f:
            return {f"b{n}": record_counts(json.loads(_read(f, at))["record"]) for n, at in self.index.items()}

    def _claim(self) -> None:
        where = f"{socket.gethostname()}:{self.spool}"
        held = self.job.redis.hget(self.job.keys.meta, "spool")
        drained = int(self.job.redis.hget(self.job.keys.meta, "drained") or 0)
        if held and held != where and drained and not self.index:
            raise JobError(f"job {self.job.job_id}: the scores collected so far are in {held}; run "
                           "`agile results` on that machine with -o in that directory")
        self.job.meta["spool"] = where
        self.job.redis.hset(self.job.keys.meta, "spool", where)

    def step(self) -> int:
        """Move the batch records Redis holds now into the spool; returns the batches moved."""
        moved = 0
        with self.spool.open("ab") as f:
            for page in drain_pages(self.job.redis, self.job.keys):
                new = [(bid, raw) for bid, raw in page if BATCH_ID.match(bid) and _number(bid) not in self.index]
                for bid, raw in new:
                    # kept as the worker wrote it, not decoded and encoded again; a spool line is one record
                    if "\n" in raw or not raw.startswith("{"):
                        raw = json.dumps(json.loads(raw), ensure_ascii=False)
                    line = f'{{"batch": "{bid}", "record": {raw}}}\n'.encode()
                    self.index[_number(bid)] = (f.tell(), len(line))
                    f.write(line)
                f.flush()
                os.fsync(f.fileno())  # on disk before the page is deleted from Redis
                if new:
                    self.job.redis.hincrby(self.job.keys.meta, "drained", len(new))
                moved += len(new)
                self._find_labels([_number(bid) for bid, _ in new])
        self._write_ready()
        return moved

    def complete(self, total_batches: int) -> bool:
        return all(n in self.index for n in range(total_batches))

    def _record(self, f, n: int) -> dict:
        return json.loads(_read(f, self.index[n]))["record"]

    def open_output(self, batches: Iterable[Batch], batch_size: int, total_rows: int,
                    labels: list[str], names: list[str] | None = None) -> None:
        """Write the output while the job runs: each batch as soon as it and every batch before it are
        in the spool (`step` does it), so the job ends a moment after its last batch, not a whole file's
        write later. The rows go to a temporary file beside the output; `finish` puts it in place.

        `batches` are the dump's, in order (their ids as written); `labels` the one policy's output
        names if the workers write none (every row failed); `names`: the job is a policy set of these
        policies (the set's columns, `agile.output.per_policy`).
        """
        self._out = _Output(iter(batches), batch_size, total_rows, -(-total_rows // batch_size), labels, names)
        self._find_labels(list(self.index))
        self._write_ready()

    def _find_labels(self, numbers: list[int]) -> None:
        """One policy's output names, as the workers wrote them (an adapter may rename its labels), from
        the first of these records to have any; a set's columns are known from the start."""
        out = self._out
        if out is None or out.names or out.found or not numbers:
            return
        with self.spool.open("rb") as f:
            for n in sorted(numbers):
                labels = record_labels(self._record(f, n))
                if labels:
                    out.labels, out.found = labels, True
                    return

    def _write_ready(self, last: bool = False) -> None:
        """Write every batch now in order (`last`: every batch, the labels as they are by now)."""
        out = self._out
        if out is None or not (out.names or out.found or last) or not (last or out.next in self.index):
            return
        try:
            self._write_batches(out, last)
        except BaseException:
            self.abort()
            raise

    def _write_batches(self, out: _Output, last: bool) -> None:
        if out.writer is None:
            out.writer = TableWriter(self.out, self.fmt, schema=_layout({}, out.names, out.labels).schema())
        if out.next == out.total_batches:
            return
        with self.spool.open("rb") as f:
            while out.next < out.total_batches and (last or out.next in self.index):
                n, record = out.next, self._record(f, out.next)
                batch = next(out.batches, None)
                ids = batch.ids if batch is not None else []
                if len(ids) != min(out.batch_size, out.total_rows - n * out.batch_size):
                    raise SourceChanged(f"{self.out}: the source no longer has the rows the job was made from")
                layout, results = _layout(record, out.names, out.labels), record_results(record, len(ids))
                out.writer.write_columns(layout.columns(ids, results, record.get("model", "")))
                layout.count(results, out.totals.predictions)
                out.totals.failed += sum(map(bool, results.errors))
                out.next += 1
        out.writer.flush()

    def finish(self, before_rename: Callable[[], None] | None = None) -> Totals:
        """Write the rest of the output (one row per input row, in order) and put it in place in one
        rename; remove the spool. `before_rename()` runs once every row is written, before the output
        replaces anything: its exception leaves the old output (and the spool) as they were."""
        out = self._out
        self._write_ready(last=True)
        try:
            if next(out.batches, None) is not None:
                raise SourceChanged(f"{self.out}: the source has more rows than the job was made from")
            if before_rename is not None:
                before_rename()
            out.writer.close()
        except BaseException:
            self.abort()
            raise
        totals = out.totals
        totals.rows = out.writer.rows
        totals.scored = totals.rows - totals.failed
        self.spool.unlink(missing_ok=True)
        return totals

    def abort(self) -> None:
        """Drop the output written so far (the spool stays: a rerun writes it again from there)."""
        if self._out is None:
            return
        if self._out.writer is not None:
            self._out.writer.abort()
            self._out.writer = None
        close = getattr(self._out.batches, "close", None)  # the dump's reader
        if close is not None:
            close()
        self._out = None


@dataclass
class _Output:
    """The output being written, batch by batch in input order, while the job runs."""

    batches: Iterator[Batch]
    batch_size: int
    total_rows: int
    total_batches: int
    labels: list[str]
    names: list[str] | None
    found: bool = False  # `labels` are the workers' own
    next: int = 0  # the next batch to write
    writer: TableWriter | None = None
    totals: Totals = field(default_factory=Totals)


def _number(batch_id: str) -> int:
    return int(BATCH_ID.match(batch_id).group(1))


def _read(f, at: tuple[int, int]) -> bytes:
    f.seek(at[0])
    return f.read(at[1])


def _layout(record: dict, names: list[str] | None, labels: list[str]) -> output.Layout:
    """The output columns for a batch record: a set's (with the versions that batch was scored with)
    or one policy's."""
    if names:
        positive = record.get("positive_labels") or {}
        return output.per_policy({n: positive.get(n, "") for n in names}, record.get("versions") or {})
    key = (record.get("policies") or [record.get("policy", "")])[0]
    return output.one_policy((record.get("names") or {}).get(key, key), labels, key)
