"""Write-back of a job's batches, exactly once per batch however often it is delivered.

One Lua script per batch adds the batch id to the job's `done` set and, only if
it was not there yet, stores the batch's record (its rows' results as columns,
docs/QUEUE.md) and bumps the counters: a batch delivered again (a worker killed after
writing, a visibility timeout that fired early) changes nothing. A job that was
delivered or cancelled, or whose meta hash is gone (expired, a FLUSHALL, a Redis
restarted empty before its producer restored it), takes no write at all: no key is
created again, so nothing is left that `agile cancel` could not find. Its producer
restores an emptied job and sends the batches it lacks again.
Each write-back also pushes a token onto the job's `wake` list, on which a producer
waiting for room or results blocks (Job.wait) instead of sleeping a poll interval.
Delivery counts cap poison batches; counting one is retried through a Redis
restart, so a batch is never dropped for want of its count.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from agile.settings import QueueSettings
from agile.wire import BatchRequest, JobKeys, task_deliveries_key

if TYPE_CHECKING:
    from agile.models import ModelInfo
    from agile.policy import Policy
    from agile.policy_set import Scored

log = logging.getLogger("agile.worker")
RETRY_SECONDS = 120.0  # how long a delivery count waits for Redis before the batch goes back on the queue


# A job exists while its meta hash has `created` (Job.create, or a producer's restore) and it has not ended.
GONE = """
local state = redis.call('HMGET', KEYS[1], 'created', 'status')
local gone = not state[1] or state[2] == 'delivered' or state[2] == 'cancelled'
"""

# KEYS: meta, deliveries, done (job-less: the deliveries hash three times). ARGV: field, ttl, is job
BEGIN = GONE + """
if ARGV[3] == '1' and gone then return {-1, false, 0} end
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
local err = redis.call('HGET', KEYS[2], ARGV[1] .. ':error')
redis.call('EXPIRE', KEYS[2], ARGV[2])
local done = 0
if ARGV[3] == '1' then done = redis.call('SISMEMBER', KEYS[3], ARGV[1]) end
return {n, err, done}
"""

# KEYS: meta, done, results, versions, deliveries, inflight, wake
# ARGV: batch id, now, version JSON, ttl, rows scored, rows failed, record JSON
WRITE_BACK = GONE + """
if gone then return -1 end
local batch = ARGV[1]
if redis.call('SADD', KEYS[2], batch) == 0 then return 0 end
redis.call('HSET', KEYS[3], batch, ARGV[7])
redis.call('HINCRBY', KEYS[1], 'scored', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'failed', ARGV[6])
redis.call('HSETNX', KEYS[1], 'first_done_at', ARGV[2])
redis.call('HSET', KEYS[1], 'last_done_at', ARGV[2])
if ARGV[3] ~= '' then redis.call('SADD', KEYS[4], ARGV[3]) end
redis.call('HDEL', KEYS[5], batch, batch .. ':error')
redis.call('HDEL', KEYS[6], batch)
redis.call('RPUSH', KEYS[7], '1')
redis.call('LTRIM', KEYS[7], -16, -1)
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ARGV[4]) end
return 1
"""

# KEYS: meta, deliveries (job-less: the deliveries hash twice). ARGV: field, reason, ttl, is job
RECORD_ERROR = GONE + """
if ARGV[4] == '1' and gone then return -1 end
redis.call('HSET', KEYS[2], ARGV[1] .. ':error', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""


@dataclass
class Delivery:
    count: int  # this delivery's number, from 1 (0 when the job is gone)
    last_error: str | None  # what failed the previous delivery, if it raised
    already_done: bool  # the batch was written back before (a redelivery after success)
    gone: bool = False  # the job was delivered or cancelled: nothing to do, nothing to write


class Store:
    def __init__(self, settings: QueueSettings, client=None):
        self.settings = settings
        self.redis = client or settings.redis_client()
        self._begin = self.redis.register_script(BEGIN)
        self._write_back = self.redis.register_script(WRITE_BACK)
        self._record_error = self.redis.register_script(RECORD_ERROR)

    def _retrying(self, what: str, call):
        """`call()`, retried while Redis is down or loading (a restart), up to RETRY_SECONDS."""
        deadline, wait = time.monotonic() + RETRY_SECONDS, 0.2
        while True:
            try:
                return call()
            except RedisError as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("Redis error while %s (%s); retrying in %.1f s", what, exc, wait)
                time.sleep(wait)
                wait = min(wait * 2, 5.0)

    def begin(self, req: BatchRequest, task_id: str) -> Delivery:
        """Count this delivery; say whether the batch is already written back or its job is gone."""
        if req.job_id:
            keys = JobKeys(self.settings.key_prefix, req.job_id)
            key_list, field = [keys.meta, keys.deliveries, keys.done], req.batch_id
        else:
            key = task_deliveries_key(self.settings.key_prefix)
            key_list, field = [key, key, key], task_id
        args = [field, self.settings.job_ttl, "1" if req.job_id else "0"]
        count, error, done = self._retrying(
            f"counting delivery of {req.batch_key or task_id}", lambda: self._begin(keys=key_list, args=args))
        if count == -1:
            return Delivery(0, None, False, gone=True)
        return Delivery(int(count), error, bool(done))

    def record_error(self, req: BatchRequest, task_id: str, reason: str) -> None:
        """Keep what failed this delivery for the next one (nothing for a job that is gone)."""
        if req.job_id:
            keys = JobKeys(self.settings.key_prefix, req.job_id)
            key_list, field = [keys.meta, keys.deliveries], req.batch_id
        else:
            key = task_deliveries_key(self.settings.key_prefix)
            key_list, field = [key, key], task_id
        self._record_error(keys=key_list, args=[field, reason, self.settings.job_ttl, "1" if req.job_id else "0"])

    def forget(self, task_id: str) -> None:
        """A job-less task ended: drop its delivery count."""
        key = task_deliveries_key(self.settings.key_prefix)
        self.redis.hdel(key, task_id, f"{task_id}:error")

    def write_record(self, job_id: str, batch_id: str, record: dict, scored: int, failed: int,
                     version: dict | None) -> int:
        """Store one batch's record: 1 written now, 0 written before, -1 the job is gone."""
        keys = JobKeys(self.settings.key_prefix, job_id)
        args = [batch_id, f"{time.time():.3f}", json.dumps(version, sort_keys=True) if version else "",
                self.settings.job_ttl, scored, failed, json.dumps(record, separators=(",", ":"))]
        key_list = [keys.meta, keys.done, keys.results, keys.versions, keys.deliveries, keys.inflight, keys.wake]
        return int(self._retrying(f"writing back {job_id}/{batch_id}",
                                  lambda: self._write_back(keys=key_list, args=args)))

    def finish(self, req: BatchRequest, task_id: str, scored: Mapping[str, Scored], rows: list[int],
               info: ModelInfo, used: Mapping[str, Policy]) -> int:
        """Write a job batch's results, or end a job-less task: one record for every policy set, a single
        policy being a set of one. `scored` holds each policy's results as columns over the items
        at `rows` (the others failed: `req.problems`); `used` is each policy the batch was scored with.

        The record is columns, as scored (docs/QUEUE.md): encoding a dict per comment was most of a
        worker's CPU outside the model."""
        if not req.job_id:
            self.forget(task_id)
            return 1
        columns = {}
        for key, s in scored.items():
            columns[key] = {"values": s.values} if s.rows is None else \
                {"values": s.values, "rows": [rows[j] for j in s.rows]}
        record = {"n": len(req), "columns": columns, "model": info.spec, "policies": list(used),
                  "names": {key: p.name for key, p in used.items()},
                  "versions": {key: p.version for key, p in used.items()},
                  "positive_labels": {key: p.positive_name for key, p in used.items()}}
        if req.problems:
            record["errors"] = {str(i): why for i, why in req.problems.items()}
        version = {"model": info.spec, "model_checksum": info.checksum, "adapters": record["versions"]}
        failed = len(req) - len(rows)
        return self.write_record(req.job_id, req.batch_id, record, len(rows), failed, version)

    def fail(self, req: BatchRequest, task_id: str, reason: str) -> int:
        """Every item of the batch failed with `reason` (a job's batch), or a job-less task ended."""
        if not req.job_id:
            self.forget(task_id)
            return 1
        return self.refuse(req.job_id, req.batch_id, len(req), reason)

    def refuse(self, job_id: str, batch_id: str, n_items: int, reason: str) -> int:
        """Every row of a batch fails with `reason`: a payload the worker cannot parse but whose batch it
        can name, or a batch that cannot be scored."""
        return self.write_record(job_id, batch_id, {"error": reason, "n": n_items}, 0, n_items, None)
