"""The producer's commands as functions: submit a dump, follow a job, fetch results, or all three.

`moderate` is what most people run: it queues the dump with backpressure,
drains scores into the output while the workers go, repairs lost batches, and
cleans the job out of Redis at the end.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from agile.producer.batches import FileSource, make_batches
from agile.producer.jobs import Job, JobStatus
from agile.producer.results import Drain
from agile.settings import QueueSettings


@dataclass
class Summary:
    job_id: str
    out: Path
    rows: int
    predictions: dict[str, int]  # label -> comments; "failed" -> comments with an error
    seconds: float
    status: JobStatus

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class Progress:
    """A tqdm bar (comments written back of comments queued) with rate and ETA, on stderr."""

    def __init__(self, job_id: str, enabled: bool = True):
        self.bar = tqdm(total=0, unit=" comments", desc=f"job {job_id}", disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True)

    def __call__(self, status: JobStatus) -> None:
        if status.queued != self.bar.total:
            self.bar.total = status.queued
        self.bar.update(status.scored + status.failed - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _batches(settings: QueueSettings, source: FileSource) -> Callable:
    return lambda: make_batches(source.rows(), settings.batch_size)


def _submit(settings: QueueSettings, job: Job, source: FileSource,
            on_wait: Callable[[], None] | None, progress: bool) -> None:
    bar = Progress(job.job_id, progress)

    def tick() -> None:
        if on_wait:
            on_wait()
        bar(job.status())

    batches = _batches(settings, source)
    try:
        job.submit(batches(), on_wait=tick, source=batches)
    except BaseException:
        job.redis.hset(job.keys.meta, "status", "abandoned")  # never completes; its keys expire
        raise
    finally:
        bar.close()


def submit(settings: QueueSettings, source: FileSource, adapter: str | None = None, *,
           labels: list[str] | None = None, instructions: str | None = None, model: str | None = None,
           progress: bool = True) -> Job:
    """Queue every row of the file as one job (blocks while max_in_flight batches are pending)."""
    job = Job(settings).create(adapter=adapter, model=model, labels=labels, instructions=instructions,
                               source=source.to_meta())
    _submit(settings, job, source, None, progress)
    return job


def results(settings: QueueSettings, job: Job, out: str | Path, fmt: str | None = None, *,
            wait: bool = True, progress: bool = True, drain: Drain | None = None,
            timeout: float | None = None, on_wait: Callable[[], None] | None = None) -> Summary:
    """Stream the job's results into `out`, draining Redis; by default until the job is complete.

    `on_wait` runs between polls (the demo checks its worker is still alive there).
    """
    started = time.monotonic()
    drain = drain or Drain(job.redis, job.keys, out, fmt)

    def tick() -> None:
        drain.step()
        if on_wait:
            on_wait()

    status = job.status()
    if wait:
        meta_source = FileSource.from_meta(status.meta)
        source = _batches(settings, meta_source) if meta_source and Path(meta_source.path).is_file() else None
        bar = Progress(job.job_id, progress)
        try:
            status = job.wait(source, on_wait=tick, progress=bar, timeout=timeout)
        finally:
            bar.close()
    drain.step()
    rows = drain.finish()
    if status.complete:
        job.delete()
    return Summary(job.job_id, drain.out, rows, dict(drain.predictions), time.monotonic() - started, status)


def moderate(settings: QueueSettings, source: FileSource, out: str | Path, adapter: str | None = None, *,
             labels: list[str] | None = None, instructions: str | None = None, model: str | None = None,
             fmt: str | None = None, progress: bool = True, timeout: float | None = None,
             on_wait: Callable[[], None] | None = None) -> Summary:
    """Submit, follow and collect in one go; the output holds one row per comment id."""
    started = time.monotonic()
    job = Job(settings)
    drain = Drain(job.redis, job.keys, out, fmt)  # checks the output path before anything is queued
    job.create(adapter=adapter, model=model, labels=labels, instructions=instructions,
               source=source.to_meta())

    def tick() -> None:
        drain.step()
        if on_wait:
            on_wait()

    _submit(settings, job, source, tick, progress)
    summary = results(settings, job, out, fmt, progress=progress, drain=drain, timeout=timeout, on_wait=on_wait)
    summary.seconds = time.monotonic() - started
    return summary
