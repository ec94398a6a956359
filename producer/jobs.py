"""A scoring job in Redis: self-contained metadata, a lifecycle, backpressure from Redis state, repair.

Everything needed to finish, repair or resume a job lives in its meta hash
(source and how to read it, its fingerprint, batch size, policies, totals), so
any process that can read the dump can carry it on. Lifecycle: submitting ->
submitted -> complete -> delivered, or cancelled. Backpressure counts a job's
batches sent and not yet written back (the `inflight` hash, which workers clear
on write-back) and their bytes, so it holds across processes and restarts.
Repair: the queue cannot promise that nothing is lost (a Redis restart without
persistence drops messages and keys), so a job that stops moving re-sends the
batches below its submission frontier that were never written back; keyed
writes make that safe. A Redis that came back empty gets the job's meta and the
batches already collected (`restore`) before anything is re-sent.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from agile.adapters import check_name
from agile.broker import queue_depth, sender
from agile.producer.source import Batch, Plan
from agile.prompt import DEFAULT_INSTRUCTIONS, DEFAULT_LABELS, PromptTemplate
from agile.settings import QueueSettings
from agile.wire import TASK_NAME, BatchRequest, JobKeys, PayloadError

POLL_SECONDS = 0.2
IDLE_STALL_SECONDS = 5.0  # queue empty, nothing in flight, no progress: batches were lost
COUNTERS = ("scored", "failed", "first_done_at", "last_done_at", "resent_batches", "drained")

# KEYS: meta, done. ARGV: ttl, n static pairs, the pairs, then (batch id, scored, failed) triples.
RESTORE = """
local n = tonumber(ARGV[2])
local i = 3
for _ = 1, n do
  redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
while i <= #ARGV do
  if redis.call('SADD', KEYS[2], ARGV[i]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'scored', ARGV[i + 1])
    redis.call('HINCRBY', KEYS[1], 'failed', ARGV[i + 2])
  end
  i = i + 3
end
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ARGV[1]) end
return 1
"""


class JobError(RuntimeError):
    """A job that cannot be run, resumed or collected as asked; the message says why and what to do."""


def payload(policies: list[dict], observe: bool = False) -> dict:
    """The task keys (besides items, job and batch) that carry a job's policies.

    One policy goes as the plain single-policy payload (`adapter`, `labels`, ...);
    several, or one with a gate, as a policy set (`policies`).
    """
    policies = [{k: v for k, v in p.items() if v is not None} for p in policies]
    flag = {"observe": True} if observe else {}
    if len(policies) == 1 and "if" not in policies[0]:
        return {**policies[0], **flag}
    model = {"model": policies[0]["model"]} if policies[0].get("model") else {}
    return {"policies": [{k: v for k, v in p.items() if k != "model"} for p in policies], **model, **flag}


def check_policy(policies: list[dict], observe: bool = False) -> None:
    """The worker's own checks on a job's policies (payload parser, label rules, adapter names), run before
    a job exists. Whether the workers have an adapter only they can tell: its batches fail closed if not."""
    kwargs = payload(policies, observe)
    try:
        BatchRequest.from_task((), {"items": [{"id": "0", "text": "x"}], "job_id": "check", "batch_id": "b0",
                                    **kwargs})
        for policy in kwargs.get("policies") or [kwargs]:
            if policy.get("adapter") is not None:
                check_name(policy["adapter"])
        if not kwargs.get("adapter") and not kwargs.get("policies"):
            PromptTemplate(tuple(kwargs.get("labels") or DEFAULT_LABELS),
                           kwargs.get("instructions") or DEFAULT_INSTRUCTIONS)
    except ValueError as exc:  # PayloadError, AdapterError, or PromptTemplate's label rules
        raise PayloadError(f"the workers would refuse this policy: {exc}") from None


@dataclass
class JobStatus:
    job_id: str
    meta: dict[str, str]
    done_batches: int
    versions: list[dict] = field(default_factory=list)
    in_flight: int = 0

    def _int(self, key: str) -> int:
        return int(self.meta.get(key) or 0)

    @property
    def exists(self) -> bool:
        return bool(self.meta)

    total_rows = property(lambda self: self._int("total_rows"))
    total_batches = property(lambda self: self._int("total_batches"))
    next_batch = property(lambda self: self._int("next_batch"))
    scored = property(lambda self: self._int("scored"))
    failed = property(lambda self: self._int("failed"))
    duplicates = property(lambda self: self._int("duplicate_ids"))

    @property
    def state(self) -> str:
        state = self.meta.get("status", "")
        if state in ("submitting", "submitted") and self.total_batches and self.done_batches >= self.total_batches:
            return "complete"
        return state

    @property
    def complete(self) -> bool:
        return self.state in ("complete", "delivered")

    @property
    def rows_done(self) -> int:
        return min(self.scored + self.failed, self.total_rows)

    @property
    def rate(self) -> float | None:
        """Comments per second since the job was created."""
        last = float(self.meta.get("last_done_at") or 0)
        span = last - float(self.meta.get("created") or last)
        return self.rows_done / span if span > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far; None once the job is done, delivered or cancelled."""
        if self.state not in ("submitting", "submitted") or not self.rate:
            return None
        return max(0.0, (self.total_rows - self.rows_done) / self.rate)


class Job:
    def __init__(self, settings: QueueSettings, job_id: str, meta: dict[str, str], redis=None, app=None):
        self.settings = settings
        self.job_id = job_id
        self.keys = JobKeys(settings.key_prefix, job_id)
        self.redis = redis or settings.redis_client()
        self._app = app
        self.meta = {k: v for k, v in meta.items() if k not in COUNTERS}  # to restore an emptied Redis
        self._last_done, self._last_move = -1, time.monotonic()  # for stall detection
        self._restore = self.redis.register_script(RESTORE)

    @property
    def app(self):
        if self._app is None:
            self._app = sender(self.settings)
        return self._app

    @classmethod
    def create(cls, settings: QueueSettings, policies: list[dict], plan: Plan, batch_size: int,
               source: dict[str, str], redis=None, app=None, observe: bool = False) -> Job:
        """Record a new job (state submitting) with everything needed to finish it."""
        if batch_size < 1:
            raise ValueError(f"a job needs a task size of at least 1 comment, got {batch_size}")
        policies = [{k: v for k, v in p.items() if v is not None} for p in policies]
        meta = {"created": f"{time.time():.3f}", "status": "submitting", "batch_size": str(batch_size),
                "policies": json.dumps(policies), "observe": "1" if observe else "0", "total_rows": str(plan.rows),
                "total_batches": str(plan.batches), "next_batch": "0", "duplicate_ids": str(plan.duplicates),
                "duplicate_examples": json.dumps(plan.examples), **source}
        job = cls(settings, uuid.uuid4().hex[:16], meta, redis, app)
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

    def _kwargs(self, batch: Batch) -> dict:
        return BatchRequest(batch.items(), job_id=self.job_id, batch_id=batch.id,
                            **payload(self.policies, self.observe)).to_kwargs()

    def send(self, batch: Batch, resend: bool = False) -> None:
        """Queue one batch: recorded in flight (and the frontier moved) before the message goes out."""
        kwargs = self._kwargs(batch)
        pipe = self.redis.pipeline()
        pipe.hset(self.keys.inflight, batch.id, len(json.dumps(kwargs)))
        pipe.expire(self.keys.inflight, self.settings.job_ttl)
        if resend:
            pipe.hincrby(self.keys.meta, "resent_batches", 1)
        elif batch.number >= self.next_batch:
            self.meta["next_batch"] = str(batch.number + 1)
            pipe.hset(self.keys.meta, "next_batch", self.meta["next_batch"])
        pipe.execute()
        self.app.send_task(TASK_NAME, kwargs=kwargs, queue=self.settings.queue, ignore_result=True)

    def in_flight(self) -> tuple[int, int]:
        """(batches, payload bytes) sent and not yet written back, from Redis: every process agrees."""
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

    # ------------------------------------------------------------ repair

    def restore(self, collected: dict[str, tuple[int, int]]) -> bool:
        """If Redis lost the job, put its meta back and mark the batches already collected as done."""
        if self.redis.hexists(self.keys.meta, "created"):
            return False
        static = [x for pair in self.meta.items() for x in pair]
        triples = [x for bid, (s, f) in collected.items() for x in (bid, s, f)]
        self._restore(keys=[self.keys.meta, self.keys.done],
                      args=[self.settings.job_ttl, len(self.meta), *static, *triples])
        self._last_done = -1
        return True

    def stalled(self) -> bool:
        """No batch written back for a while, and none could still be on its way."""
        done, now = self.redis.scard(self.keys.done), time.monotonic()
        if done != self._last_done:
            self._last_done, self._last_move = done, now
            return False
        idle = now - self._last_move
        if idle <= IDLE_STALL_SECONDS:
            return False
        waiting, held = queue_depth(self.redis, self.settings.queue)
        # Batches still queued, or held by a worker (a dead one's come back after the
        # visibility timeout), are not lost: wait. An idle queue means they were. On a
        # queue others keep busy, repair anyway after a long wait (at worst, work twice).
        return (waiting == 0 and held == 0) or idle > 2 * self.settings.visibility_timeout + 60

    def repair(self, batches: Iterator[Batch]) -> int:
        """Send again every batch below the frontier that was never written back; returns how many."""
        done = self.redis.smembers(self.keys.done)
        resent = 0
        for batch in batches:
            if batch.number >= self.next_batch:
                break
            if batch.id not in done:
                self.send(batch, resend=True)
                resent += 1
        self._last_move = time.monotonic()
        return resent

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
            if _job_of(raw) == self.job_id:
                removed += self.redis.lrem(self.settings.queue, 1, raw)
        return removed


def _job_of(raw: str) -> str | None:
    """The job id of a queued Celery message (protocol 2, JSON body), or None."""
    try:
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        return body[1].get("job_id")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
