"""Comment dumps read row by row and cut into fixed row ranges, the same way on every read.

Inside a job the unit is the input row: batch `b<n>` is rows n*size .. (n+1)*size-1
of the source, sent as its texts alone (results come back by position). The user's
id column is read beside them and never sent nor used as a key, so duplicate and
missing ids come back as they were. A fingerprint (size, mtime, hash of the
bytes) is stored with the job, and every process that re-reads the dump later
(to resume, repair or write the output) hashes it again, so it knows it is
reading the same rows: the bytes decide, never size and mtime alone (one process
hashes a file once while its inode change time stands, which no edit keeps).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from agile.tables import Chunk, TableError, read_chunks

EXAMPLES = 5  # duplicate ids named in the warning
EXAMPLE_WINDOW = 100_000  # duplicates are named among the first ids with one (the count is always exact)


class SourceChanged(TableError):
    """The dump a job was made from is missing or no longer the same bytes."""


_HASHED: dict[str, tuple[tuple, dict]] = {}  # path -> (its stat when hashed, fingerprint): this process's
_SETTLED_NS = 2_000_000_000  # a file changed this recently is hashed on every check


@dataclass
class Batch:
    number: int
    start: int  # row number of its first row
    ids: list[str]  # the user's ids, as written (not sent: results come back by position)
    texts: list[str]

    @property
    def id(self) -> str:
        return f"b{self.number}"


def batches(chunks: Iterable[Chunk], size: int, first: int = 0) -> Iterator[Batch]:
    """Batches of `size` consecutive rows, numbered from 0, starting at batch `first`: list slices of
    the source's column chunks, no Python per row."""
    skip, number = first * size, first
    ids: list[str] = []
    texts: list[str] = []
    for chunk in chunks:
        cut = min(skip, len(chunk.ids))
        skip -= cut
        ids += chunk.ids[cut:]
        texts += chunk.texts[cut:]
        at = 0
        while len(ids) - at >= size:
            yield Batch(number, number * size, ids[at:at + size], texts[at:at + size])
            number, at = number + 1, at + size
        del ids[:at], texts[:at]
    if ids:
        yield Batch(number, number * size, ids, texts)


@dataclass
class Plan:
    """What reading the whole dump once found, before anything is queued."""

    rows: int
    batches: int
    duplicates: int  # rows whose id an earlier row already had (blank ids not counted)
    examples: list[str] = field(default_factory=list)  # the first few of those ids
    batch_size: int = 0  # comments per task the batches were counted with
    fingerprint: dict = field(default_factory=dict)  # of the bytes, taken before the rows were read


@dataclass(frozen=True)
class FileSource:
    """A comment file and how to read it; stored in the job so any process can re-read it."""

    path: str
    text_column: str = "text"
    id_column: str | None = "id"
    id_required: bool = False  # the user named the id column: its absence is an error
    fmt: str | None = None
    delimiter: str | None = None

    @classmethod
    def of(cls, path: str | Path, text_column: str = "text", id_column: str | None = "id",
           fmt: str | None = None, delimiter: str | None = None, id_required: bool = False) -> FileSource:
        return cls(str(Path(path).resolve()), text_column, id_column, id_required, fmt, delimiter)

    def chunks(self) -> Iterator[Chunk]:
        """The rows in file order, a column chunk at a time; ids are row numbers when the file has no id column."""
        return read_chunks(self.path, self.text_column, self.id_column, fmt=self.fmt,
                           delimiter=self.delimiter, id_required=self.id_required)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FileSource:
        return cls(**json.loads(text))

    def inspect(self, batch_size: int) -> Plan:
        """Read every row once (every format or encoding error surfaces here); count duplicate ids.

        The fingerprint is taken first: a file edited while it is read or queued then differs
        from it, and the job says so when it re-reads the file, instead of mixing two versions.
        """
        fingerprint = self.fingerprint()
        parts: list[np.ndarray] = []  # a hash per non-blank id, in file order: no Python per row
        window: list[str] = []  # the first non-blank ids, to name some duplicates by
        n = 0
        for chunk in self.chunks():
            named = list(filter(None, chunk.ids))
            parts.append(np.fromiter(map(hash, named), dtype=np.int64, count=len(named)))
            if len(window) < EXAMPLE_WINDOW:
                window += named[: EXAMPLE_WINDOW - len(window)]
            n += len(chunk.ids)
        values = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        repeats = pd.Series(values).duplicated().to_numpy()  # every occurrence after an id's first
        duplicates = int(repeats.sum())
        examples = list(dict.fromkeys(window[i] for i in np.flatnonzero(repeats[: len(window)])))[:EXAMPLES]
        return Plan(n, -(-n // batch_size), duplicates, examples, batch_size, fingerprint)

    def fingerprint(self) -> dict:
        """Size, mtime and a hash of the bytes. Hashed once per process while the file's inode change
        time stands (no write, rename or `touch -r` can keep it), not once per check."""
        path = Path(self.path)
        try:
            stat = path.stat()
            key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
            known = _HASHED.get(self.path)
            if known is not None and known[0] == key:
                return dict(known[1])
            hashed_at = time.time_ns()
            digest = hashlib.blake2b(digest_size=16)
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        except FileNotFoundError:
            raise SourceChanged(f"{path}: no such file") from None
        except OSError as exc:
            raise SourceChanged(f"{path}: cannot read it ({exc.strerror})") from None
        found = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "blake2b": digest.hexdigest()}
        if hashed_at - stat.st_ctime_ns > _SETTLED_NS:  # a change within the clock's tick could keep ctime
            _HASHED[self.path] = (key, dict(found))
        return found

    def check(self, expected: dict) -> None:
        """Raise SourceChanged unless the file holds the bytes the job was made from.

        The bytes decide, never size and time alone: `cp -p`, `rsync -t` or `touch -r` keep
        the mtime of an edited file, and a same-size edit would go unseen.
        """
        path = Path(self.path)
        if not path.is_file():
            raise SourceChanged(f"{path}: the job's source is missing; it is needed to finish the job")
        now = self.fingerprint()
        if now["size"] != expected["size"] or now["blake2b"] != expected["blake2b"]:
            what = (f"{expected['size']:,} bytes then, {now['size']:,} now" if now["size"] != expected["size"]
                    else "same size, other bytes")
            raise SourceChanged(f"{path}: the job's source changed since it was submitted ({what}); "
                                "cancel the job (agile cancel) and submit the file again")


@dataclass(frozen=True)
class MemorySource:
    """Rows a service client holds in memory (`ScoringClient`): batched like a file."""

    items: tuple[tuple[str, str], ...]

    def chunks(self) -> Iterator[Chunk]:
        yield Chunk(0, [i for i, _ in self.items], [t for _, t in self.items])

