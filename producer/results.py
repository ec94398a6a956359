"""A job's scores out of Redis into a CSV, JSONL or Parquet file: one row per input row, in input order.

Workers write one record per batch (its rows' results, in row order). Each page
of records is appended to a spool beside the output and synced to disk before it
is deleted from Redis, so a crash loses nothing: run the same command again and
it carries on from the spool (a record that reached the spool but was not yet
deleted from Redis is not kept twice). When every batch is in, the output is
written from the dump (re-read for the ids, exactly as written) and the spool,
batch by batch, to a temporary file renamed into place; then the spool goes.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from agile import output
from agile.files import check_output
from agile.producer.jobs import Job, JobError
from agile.producer.source import SourceChanged
from agile.tables import TableWriter, table_format
from agile.wire import JobKeys

PAGE = 200  # batch records per HSCAN page
WRITE_ROWS = 50_000
BATCH_ID = re.compile(r"^b(\d+)$")


@dataclass
class Totals:
    rows: int = 0
    scored: int = 0
    failed: int = 0
    predictions: Counter = field(default_factory=Counter)  # label -> rows; "failed" -> rows with an error


def record_results(record: dict, n: int) -> list[dict]:
    """A batch record's per-row results ({policy: fields or None} or {"error"}), exactly `n` of them."""
    results = record.get("results")
    if results is None:
        return [{"error": record.get("error") or "the batch was refused"}] * n
    if len(results) != n:
        return [{"error": f"the worker returned {len(results)} results for {n} rows"}] * n
    if "policies" not in record:  # a worker from before one record shape (a spool kept over an upgrade)
        return [r if "error" in r else {record.get("policy", ""): r} for r in results]
    return results


def record_counts(record: dict) -> tuple[int, int]:
    """(scored, failed) rows of a batch record."""
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
        return moved

    def complete(self, total_batches: int) -> bool:
        return all(n in self.index for n in range(total_batches))

    def _records(self, total_batches: int) -> Iterator[dict]:
        with self.spool.open("rb") as f:
            for n in range(total_batches):
                yield json.loads(_read(f, self.index[n]))["record"]

    def _labels(self, total_batches: int, hint: list[str]) -> list[str]:
        """One policy's output names, as the workers wrote them (an adapter may rename its labels)."""
        for record in self._records(total_batches):
            for result in record_results(record, len(record.get("results") or ())):
                fields = next(iter(result.values())) if "error" not in result else None
                if fields:
                    return [k[2:] for k in fields if k.startswith("p_")]
        return hint

    def finish(self, rows: Iterable[tuple[str, str]], batch_size: int, total_rows: int,
               labels: list[str], names: list[str] | None = None,
               before_rename: Callable[[], None] | None = None) -> Totals:
        """Write the output (one row per input row, in order) in one rename; remove the spool.

        `names`: the job is a policy set of these policies (the set's columns, `agile.output.per_policy`).
        `before_rename()` runs once every row is written, before the output replaces anything:
        its exception leaves the old output (and the spool) as they were.
        """
        total_batches = -(-total_rows // batch_size)
        labels = [] if names else self._labels(total_batches, labels)
        schema = _layout({}, names, labels).schema()
        totals = Totals()
        rows = iter(rows)
        with TableWriter(self.out, self.fmt, schema=schema) as writer:
            page: list[dict] = []
            for n, record in enumerate(self._records(total_batches)):
                chunk = list(islice(rows, batch_size))
                if len(chunk) != min(batch_size, total_rows - n * batch_size):
                    raise SourceChanged(f"{self.out}: the source no longer has the rows the job was made from")
                layout, model = _layout(record, names, labels), record.get("model", "")
                for (row_id, _), result in zip(chunk, record_results(record, len(chunk)), strict=True):
                    error = result.get("error", "")
                    scored = None if error else result
                    page.append(layout.row(row_id, scored, model, error))
                    for key in layout.counted(scored) + (["failed"] if error else []):
                        totals.predictions[key] += 1
                    totals.failed += bool(error)
                if len(page) >= WRITE_ROWS:
                    writer.write(page)
                    page = []
            if next(rows, None) is not None:
                raise SourceChanged(f"{self.out}: the source has more rows than the job was made from")
            writer.write(page)
            totals.rows = writer.rows
            if before_rename is not None:
                before_rename()
        totals.scored = totals.rows - totals.failed
        self.spool.unlink(missing_ok=True)
        return totals


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
