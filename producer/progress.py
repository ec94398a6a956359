"""Progress of a job on stderr: one bar on a terminal, otherwise one line every few seconds.

Counts come from Redis (rows written back of the job's total), clamped to the
total; the ETA is never negative.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from agile.producer.status import JobStatus

LINE_SECONDS = 5.0


class Progress:
    def __init__(self, stream: TextIO | None = None, every: float = LINE_SECONDS):
        self.stream = stream or sys.stderr
        self.every = every
        self.bar = None
        self._last_line = 0.0
        self._started = time.monotonic()
        self._first_done: int | None = None

    def __call__(self, status: JobStatus) -> None:
        done, total = status.rows_done, status.total_rows
        if self.bar is None and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=" rows", desc=f"job {status.job_id}", file=self.stream,
                            dynamic_ncols=True)
        if self.bar is not None:
            self.bar.total = total
            self.bar.update(done - self.bar.n)
            return
        now = time.monotonic()
        if now - self._last_line < self.every and done < total:
            return
        self._last_line = now
        if self._first_done is None:
            self._first_done, self._started = done, now
        span = now - self._started
        rate = (done - self._first_done) / span if span > 0 else 0.0
        eta = f", ETA {max(0.0, (total - done) / rate):.0f} s" if rate > 0 and done < total else ""
        share = f" ({100 * done / total:.0f}%)" if total else ""
        self.stream.write(f"job {status.job_id}: {done:,}/{total:,} rows{share}, {rate:.1f}/s{eta}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
