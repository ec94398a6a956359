"""A scoring job on the queue: submit batches with backpressure, follow progress, repair losses.

Backpressure: at most AGILE_MAX_IN_FLIGHT batches are queued but not yet written
back, so Redis holds a bounded slice of even a 10-million-row dump. Repair: the
queue alone cannot promise that nothing is lost (a Redis restart can drop the
last writes), so when the job stops moving the job compares its batches with the
ones written back and sends the missing ones again; keyed writes make that safe.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

from agile.broker import queue_depth
from agile.producer.batches import Batch
from agile.settings import QueueSettings
from agile.wire import TASK_NAME, BatchRequest, Item, JobKeys

POLL_SECONDS = 0.2
IDLE_STALL_SECONDS = 5.0  # queue empty, nothing in flight, no progress: batches were lost


def celery_app(settings: QueueSettings):
    """A Celery app that only sends: no tasks, no model, the queue's own settings."""
    from celery import Celery

    app = Celery("agile-producer")
    app.conf.update(settings.celery_config())
    return app


@dataclass
class JobStatus:
    job_id: str
    meta: dict[str, str]
    done_batches: int
    versions: list[dict] = field(default_factory=list)

    def _int(self, key: str) -> int:
        return int(self.meta.get(key, 0))

    @property
    def exists(self) -> bool:
        return bool(self.meta)

    queued = property(lambda self: self._int("queued"))
    scored = property(lambda self: self._int("scored"))
    failed = property(lambda self: self._int("failed"))

    @property
    def total_batches(self) -> int | None:
        return int(self.meta["total_batches"]) if "total_batches" in self.meta else None

    @property
    def complete(self) -> bool:
        if self.meta.get("status") == "delivered":  # results fetched; the job's data is gone
            return True
        return self.total_batches is not None and self.done_batches >= self.total_batches

    @property
    def rate(self) -> float | None:
        """Comments per second since the first batch came back."""
        first, last = float(self.meta.get("first_done_at", 0)), float(self.meta.get("last_done_at", 0))
        created = float(self.meta.get("created", first))
        span = last - min(first, created) if last else 0
        return (self.scored + self.failed) / span if span > 0 else None

    @property
    def eta(self) -> float | None:
        left = self.queued - self.scored - self.failed
        return left / self.rate if self.rate and not self.complete else None


class Job:
    def __init__(self, settings: QueueSettings, job_id: str | None = None, redis=None, app=None):
        self.settings = settings
        self.job_id = job_id or uuid.uuid4().hex[:16]
        self.keys = JobKeys(settings.key_prefix, self.job_id)
        self.redis = redis or settings.redis_client()
        self._app = app
        self.sent = 0  # batches this process sent (for its in-flight bound)
        self._last_done, self._last_move = -1, time.monotonic()  # for stall detection
        self.template: dict = {}  # adapter / model / labels / instructions of every batch

    @property
    def app(self):
        if self._app is None:
            self._app = celery_app(self.settings)
        return self._app

    def create(self, adapter: str | None = None, model: str | None = None, labels: list[str] | None = None,
               instructions: str | None = None, source: dict[str, str] | None = None) -> Job:
        self.template = {k: v for k, v in dict(adapter=adapter, model=model, labels=labels,
                                                instructions=instructions).items() if v is not None}
        meta = {"created": f"{time.time():.3f}", "status": "submitting", "queued": 0,
                "template": json.dumps(self.template), **(source or {})}
        self.redis.hset(self.keys.meta, mapping=meta)
        self.redis.expire(self.keys.meta, self.settings.job_ttl)
        return self

    @classmethod
    def open(cls, settings: QueueSettings, job_id: str, redis=None) -> Job:
        job = cls(settings, job_id, redis)
        meta = job.redis.hgetall(job.keys.meta)
        if not meta:
            raise KeyError(f"no job {job_id!r} in Redis at {settings.masked_url} "
                           f"(key prefix {settings.key_prefix!r})")
        job.template = json.loads(meta.get("template", "{}"))
        return job

    def status(self) -> JobStatus:
        pipe = self.redis.pipeline()
        pipe.hgetall(self.keys.meta)
        pipe.scard(self.keys.done)
        pipe.smembers(self.keys.versions)
        meta, done, versions = pipe.execute()
        return JobStatus(self.job_id, meta, done, [json.loads(v) for v in sorted(versions)])

    def send(self, batch: Batch, count: bool = True) -> None:
        req = BatchRequest([Item(i, t) for i, t in zip(batch.ids, batch.texts, strict=True)],
                           job_id=self.job_id, batch_id=batch.id, **self.template)
        self.app.send_task(TASK_NAME, kwargs=req.to_kwargs(), queue=self.settings.queue, ignore_result=True)
        self.sent += 1
        if count:
            pipe = self.redis.pipeline()
            pipe.hincrby(self.keys.meta, "queued", len(batch.ids))
            if batch.duplicates:
                pipe.hincrby(self.keys.meta, "duplicate_ids", batch.duplicates)
            pipe.execute()

    def wait_for_room(self, on_wait: Callable[[], None] | None = None,
                      source: Callable[[], Iterator[Batch]] | None = None) -> None:
        """Block while this producer has max_in_flight batches queued and not written back.

        With a `source`, batches sent so far that were lost are sent again when the job stalls.
        """
        while True:
            done = self.redis.scard(self.keys.done)
            if self.sent - done < self.settings.max_in_flight:
                return
            if self._stalled(done):
                if source is None:
                    return  # repairing already: go on sending rather than wait for lost batches
                self.repair(islice(source(), self.sent), on_wait)
            if on_wait:
                on_wait()
            time.sleep(POLL_SECONDS)

    def _stalled(self, done: int) -> bool:
        """No batch written back for a while, and none could still be on its way."""
        now = time.monotonic()
        if done != self._last_done:
            self._last_done, self._last_move = done, now
            return False
        idle = now - self._last_move
        if idle <= IDLE_STALL_SECONDS:
            return False
        waiting, in_flight = queue_depth(self.redis, self.settings.queue)
        # Batches still queued, or held by a worker (a dead one's come back after the
        # visibility timeout), are not lost: wait. An idle queue means they were. On a
        # queue others keep busy, repair anyway after a long wait (at worst, work twice).
        return (waiting == 0 and in_flight == 0) or idle > 2 * self.settings.visibility_timeout + 60

    def submit(self, batches: Iterable[Batch], on_wait: Callable[[], None] | None = None,
               source: Callable[[], Iterator[Batch]] | None = None) -> int:
        """Send every batch (bounded in flight), then record the total: the job can now complete.

        `source` re-reads the same batches from the start, for repairs while submitting.
        """
        total = 0
        for batch in batches:
            self.wait_for_room(on_wait, source)
            self.send(batch)
            total += 1
        self.redis.hset(self.keys.meta, mapping={"total_batches": total, "status": "submitted"})
        return total

    def repair(self, batches: Iterable[Batch], on_wait: Callable[[], None] | None = None) -> int:
        """Send again every batch of the job that was never written back; returns how many."""
        self.redis.hsetnx(self.keys.meta, "created", f"{time.time():.3f}")  # Redis came back empty
        resent = 0
        for batch in batches:
            if not self.redis.sismember(self.keys.done, batch.id):
                self.wait_for_room(on_wait)
                self.sent -= 1  # the first copy is presumed lost; if it turns up, `done` dedups it
                self.send(batch, count=False)
                resent += 1
        if resent:
            self.redis.hincrby(self.keys.meta, "resent_batches", resent)
        self._last_move = time.monotonic()
        return resent

    def poll(self, source: Callable[[], Iterator[Batch]] | None = None) -> JobStatus:
        """The job's status now; with a `source`, lost batches are sent again if the job stalled."""
        status = self.status()
        if not status.complete and source is not None and self._stalled(status.done_batches):
            self.repair(source())
        return status

    def wait(self, source: Callable[[], Iterator[Batch]] | None, on_wait: Callable[[], None] | None = None,
             progress: Callable[[JobStatus], None] | None = None, timeout: float | None = None) -> JobStatus:
        """Follow the job to completion, resending lost batches when it stalls (needs `source`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if on_wait:
                on_wait()
            status = self.poll(source)
            if progress:
                progress(status)
            if status.complete:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.job_id} not complete after {timeout:.0f} s: "
                                   f"{status.done_batches}/{status.total_batches} batches written back")
            time.sleep(POLL_SECONDS)

    def delete(self) -> None:
        self.redis.delete(*[k for k in self.keys.all() if k != self.keys.meta])
        self.redis.hset(self.keys.meta, "status", "delivered")
        self.redis.expire(self.keys.meta, 24 * 3600)
