"""Scores out of Redis into a CSV, JSONL or Parquet file, draining Redis as they come.

Each page of results is appended to a spool file next to the output and synced
to disk before it is deleted from Redis, so a crash loses nothing: run the same
command again and it carries on from the spool (a page that reached the spool
but was not yet deleted from Redis is not written twice). When the job is
complete the spool becomes the output file: scored rows, then failed rows with the reason.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from agile.tables import TableWriter, table_format
from agile.wire import JobKeys

PAGE = 2000
WRITE_ROWS = 50_000
TEXT_COLUMNS = ("error", "prediction")  # "" rather than null, so Parquet types them from any row
PAGE_END = "{}"  # line closing each page in a spool


class Drain:
    def __init__(self, redis, keys: JobKeys, out: str | Path, fmt: str | None = None):
        self.redis = redis
        self.keys = keys
        self.out = Path(out)
        self.fmt = table_format(self.out, fmt)
        if not self.out.parent.is_dir():
            raise FileNotFoundError(f"{self.out}: directory {self.out.parent} does not exist")
        self.spools = {name: self.out.with_name(f".{self.out.name}.{keys.job_id}.{name}.jsonl")
                       for name in ("scores", "failed")}
        self.rows = 0
        self.predictions: Counter[str] = Counter()
        self._seen = {name: _resume(path) for name, path in self.spools.items()}

    def step(self) -> int:
        """Move what Redis holds now into the spools; returns the rows moved."""
        moved = 0
        spools = {name: path.open("a", encoding="utf-8") for name, path in self.spools.items()}
        try:
            for name, rows in drain_pages(self.redis, self.keys):
                rows = [r for r in rows if r["id"] not in self._seen[name]]
                self.predictions.update(r.get("prediction", "failed") for r in rows)
                spool = spools[name]
                spool.write("".join(json.dumps(r) + "\n" for r in rows) + PAGE_END + "\n")
                spool.flush()
                os.fsync(spool.fileno())
                moved += len(rows)
        finally:
            for spool in spools.values():
                spool.close()
        self._seen = {name: set() for name in self.spools}  # only a first pass can meet that page again
        self.rows += moved
        return moved

    def finish(self) -> int:
        """Write the output file from the spools and remove them; returns the rows written."""
        columns: dict[str, None] = {"id": None}
        for row in _read(self.spools["scores"]):
            columns.update(dict.fromkeys(row))
        columns.pop("error", None)
        columns["error"] = None  # last, so failed rows read id ... error
        written = 0
        with TableWriter(self.out, self.fmt) as writer:
            for name in ("scores", "failed"):
                page = []
                for row in _read(self.spools[name]):
                    page.append({c: row.get(c, "" if c in TEXT_COLUMNS else None) for c in columns})
                    if len(page) == WRITE_ROWS:
                        writer.write(page)
                        written, page = written + len(page), []
                writer.write(page)
                written += len(page)
        for spool in self.spools.values():
            spool.unlink(missing_ok=True)
        return written


def drain_pages(redis, keys: JobKeys) -> Iterator[tuple[str, list[dict]]]:
    """("scores" | "failed", rows) pages now in Redis; a page is deleted once the caller asks for the next."""
    for name, key in (("scores", keys.scores), ("failed", keys.failed)):
        cursor = None
        while cursor != 0:
            cursor, page = redis.hscan(key, cursor or 0, count=PAGE)
            if page:
                yield name, [_row(name, k, v) for k, v in page.items()]
                redis.hdel(key, *page)


def _row(name: str, item_id: str, value: str) -> dict:
    if name == "scores":
        return {"id": item_id, **json.loads(value), "error": ""}
    return {"id": item_id, "error": value}


def _read(path: Path) -> Iterator[dict]:
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip() and line.strip() != PAGE_END:
                yield json.loads(line)


def _resume(path: Path) -> set[str]:
    """Cut a page a crash left half-written; return the ids of the last whole page.

    That page may still be in Redis (deleted after the sync): its ids are skipped once.
    """
    if not path.is_file():
        return set()
    keep, last, current = 0, set(), set()
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            if line.strip() == PAGE_END.encode():
                keep, last, current = f.tell(), current, set()
            else:
                current.add(json.loads(line)["id"])
    with path.open("rb+") as f:
        f.truncate(keep)
    return last
