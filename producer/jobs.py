"""A scoring job in Redis: self-contained metadata, a lifecycle, backpressure from Redis state.

Everything needed to finish, repair or resume a job lives in its meta hash
(source and how to read it, its fingerprint, batch size, policies, totals), so
any process that can read the dump can carry it on. Lifecycle: submitting ->
submitted -> complete -> delivered, or cancelled. Backpressure counts a job's
batches sent and not yet written back (the `inflight` hash, which workers clear
on write-back) and their bytes, so it holds across processes and restarts.
A waiting producer blocks on the job's `wake` list, which every write-back pushes to.
Lost batches: agile.producer.repair. Its policies on the wire: agile.producer.payload.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

from agile.broker import job_of, message
from agile.producer.payload import payload
from agile.producer.source import Batch, Plan
from agile.producer.status import JobStatus
from agile.settings import QueueSettings
from agile.wire import JobKeys

POLL_SECONDS = 0.2
COUNTERS = ("scored", "failed", "first_done_at", "last_done_at", "resent_batches", "drained")


class JobError(RuntimeError):
    """A job that cannot be run, resumed or collected as asked; the message says why and what to do."""


class Job:
    def __init__(self, settings: QueueSettings, job_id: str, meta: dict[str, str], redis=None):
        self.settings = settings
        self.job_id = job_id
        self.keys = JobKeys(settings.key_prefix, job_id)
        self.redis = redis or settings.redis_client()
        self._payload: dict | None = None  # the task kwargs every batch of the job shares
        self.meta = {k: v for k, v in meta.items() if k not in COUNTERS}  # to restore an emptied Redis

    @classmethod
    def create(cls, settings: QueueSettings, policies: list[dict], plan: Plan, batch_size: int,
               source: dict[str, str], redis=None, observe: bool = False) -> Job:
        """Record a new job (state submitting) with everything needed to finish it."""
        if batch_size < 1:
            raise ValueError(f"a job needs a task size of at least 1 comment, got {batch_size}")
        policies = [{k: v for k, v in p.items() if v is not None} for p in policies]
        meta = {"created": f"{time.time():.3f}", "status": "submitting", "batch_size": str(batch_size),
                "policies": json.dumps(policies), "observe": "1" if observe else "0", "total_rows": str(plan.rows),
                "total_batches": str(plan.batches), "next_batch": "0", "duplicate_ids": str(plan.duplicates),
                "duplicate_examples": json.dumps(plan.examples), **source}
        job = cls(settings, uuid.uuid4().hex[:16], meta, redis)
        pipe = job.redis.pipeline()
        pipe.hset(job.keys.meta, mapping=meta)
        pipe.expire(job.keys.meta, settings.job_ttl)
        pipe.execute()
        return job

    @classmethod
    def open(cls, settings: QueueSettings, job_id: str, redis=None) -> Job:
        redis = redis or settings.redis_client()
        meta = redis.hgetall(JobKeys(settings.key_prefix, job_id).meta)
        if not meta or "created" not in meta:
            raise JobError(f"no job {job_id!r} in Redis at {settings.masked_url} (key prefix "
                           f"{settings.key_prefix!r}): never created, expired, or lost with Redis")
        return cls(settings, job_id, meta, redis)

    @property
    def lease_key(self) -> str:
        """The job's lease (agile.producer.lease): which process carries it on now."""
        return self.keys.meta.rpartition(":")[0] + ":lease"

    @property
    def policies(self) -> list[dict]:
        return json.loads(self.meta["policies"])

    @property
    def policy(self) -> dict:
        """The first (for a single-policy job, the only) policy."""
        return self.policies[0]

    @property
    def observe(self) -> bool:
        return self.meta.get("observe") == "1"

    @property
    def is_set(self) -> bool:
        """Scored as a policy set (several policies, or one behind a gate): the set's output columns."""
        return "policies" in payload(self.policies)

    @property
    def batch_size(self) -> int:
        return int(self.meta["batch_size"])

    @property
    def total_batches(self) -> int:
        return int(self.meta["total_batches"])

    @property
    def next_batch(self) -> int:
        return int(self.meta.get("next_batch", 0))

    def status(self) -> JobStatus:
        pipe = self.redis.pipeline()
        pipe.hgetall(self.keys.meta)
        pipe.scard(self.keys.done)
        pipe.smembers(self.keys.versions)
        pipe.hlen(self.keys.inflight)
        meta, done, versions, in_flight = pipe.execute()
        return JobStatus(self.job_id, meta, done, [json.loads(v) for v in sorted(versions)], in_flight)

    # ------------------------------------------------------------ sending

    def _message(self, batch: Batch) -> str:
        """The batch's task message, encoded once: its kwargs are what agile.wire.BatchRequest parses."""
        if self._payload is None:
            self._payload = {"job_id": self.job_id, **payload(self.policies, self.observe)}
        return message(uuid.uuid4().hex, uuid.uuid4().hex, self.settings.queue,
                       {"texts": batch.texts, "batch_id": batch.id, **self._payload},
                       ignore_result=True, sender="agile-producer")

    def send(self, batch: Batch, resend: bool = False) -> None:
        """Queue one batch, recorded in flight (and the frontier moved) in the same transaction."""
        body = self._message(batch)
        pipe = self.redis.pipeline()
        pipe.hset(self.keys.inflight, batch.id, len(body))
        pipe.expire(self.keys.inflight, self.settings.job_ttl)
        if resend:
            pipe.hincrby(self.keys.meta, "resent_batches", 1)
        elif batch.number >= self.next_batch:
            self.meta["next_batch"] = str(batch.number + 1)
            pipe.hset(self.keys.meta, "next_batch", self.meta["next_batch"])
        pipe.lpush(self.settings.queue, body)  # kombu's Redis transport: a queue is a list, taken from the right
        pipe.execute()

    def wait(self, seconds: float = POLL_SECONDS) -> None:
        """Until a worker writes a batch back (its token on the job's `wake` list) or `seconds` pass:
        a job refills its window and collects a moment after a batch is in, not a poll later."""
        pipe = self.redis.pipeline(transaction=False)  # BLPOP blocks only outside MULTI
        pipe.blpop([self.keys.wake], timeout=seconds)
        pipe.delete(self.keys.wake)  # the other tokens of the same moment: one wake-up is enough
        pipe.execute()

    def in_flight(self) -> tuple[int, int]:
        """(batches, message bytes) sent and not yet written back, from Redis: every process agrees."""
        sizes = self.redis.hvals(self.keys.inflight)
        return len(sizes), sum(int(s) for s in sizes)

    def has_room(self) -> bool:
        batches, size = self.in_flight()
        return batches == 0 or (batches < self.settings.max_in_flight and size < self.settings.max_bytes_in_flight)

    def submit_some(self, batches: Iterator[Batch]) -> bool:
        """Send batches from `batches` while there is room; True once every batch of the job is sent."""
        while self.next_batch < self.total_batches:
            if not self.has_room():
                return False
            batch = next(batches, None)
            if batch is None:
                raise JobError(f"job {self.job_id}: its source ran out at batch b{self.next_batch} of "
                               f"{self.total_batches}; it changed since the job was made")
            self.send(batch)
        if self.meta.get("status") == "submitting":
            self.meta["status"] = "submitted"
            self.redis.hset(self.keys.meta, "status", "submitted")
        return True

    # ------------------------------------------------------------ endings

    def _end(self, state: str, **fields: str) -> None:
        self.meta["status"] = state
        pipe = self.redis.pipeline()
        pipe.hset(self.keys.meta, mapping={"status": state, **fields})  # workers write nothing from now on
        pipe.delete(*[k for k in self.keys.all() if k != self.keys.meta], self.lease_key)
        pipe.expire(self.keys.meta, self.settings.job_ttl)
        pipe.execute()

    def delivered(self, out: str) -> None:
        self._end("delivered", delivered_at=f"{time.time():.3f}", delivered_to=out)

    def cancel(self) -> int:
        """Stop the job: no more writes, its keys gone, its queued batches taken off the queue."""
        self._end("cancelled", cancelled_at=f"{time.time():.3f}")
        removed = 0
        for raw in self.redis.lrange(self.settings.queue, 0, -1):
            if job_of(raw) == self.job_id:
                removed += self.redis.lrem(self.settings.queue, 1, raw)
        return removed

