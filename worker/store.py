"""Write-back of scores, keyed by comment id, exactly once per batch however often it is delivered.

One Lua script per batch adds the batch id to the job's `done` set and, only if
it was not there yet, stores the scores and failures and bumps the counters: a
batch delivered again (a worker killed after writing, a visibility timeout that
fired early) changes nothing. Delivery counts cap poison batches.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from agile.settings import QueueSettings
from agile.wire import BatchRequest, JobKeys, task_deliveries_key

# KEYS: done, scores, failed, meta, versions, deliveries
# ARGV: batch id, now, version JSON, ttl, n scored, then n (id, result JSON) pairs, then (id, reason) pairs
WRITE_BACK = """
local batch = ARGV[1]
if redis.call('SADD', KEYS[1], batch) == 0 then return 0 end
local n = tonumber(ARGV[5])
local i = 6
for _ = 1, n do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local failed = 0
while i <= #ARGV do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  i = i + 2
  failed = failed + 1
end
redis.call('HINCRBY', KEYS[4], 'scored', n)
redis.call('HINCRBY', KEYS[4], 'failed', failed)
redis.call('HSETNX', KEYS[4], 'first_done_at', ARGV[2])
redis.call('HSET', KEYS[4], 'last_done_at', ARGV[2])
if ARGV[3] ~= '' then redis.call('SADD', KEYS[5], ARGV[3]) end
redis.call('HDEL', KEYS[6], batch, batch .. ':error')
for _, key in ipairs(KEYS) do redis.call('EXPIRE', key, ARGV[4]) end
return 1
"""


@dataclass
class Delivery:
    count: int  # this delivery's number, from 1
    last_error: str | None  # what failed the previous delivery, if it raised
    already_done: bool  # the batch was written back before (a redelivery after success)


class Store:
    def __init__(self, settings: QueueSettings, client=None):
        self.settings = settings
        self.redis = client or settings.redis_client()
        self._write_back = self.redis.register_script(WRITE_BACK)

    def _counter(self, req: BatchRequest, task_id: str) -> tuple[str, str]:
        if req.job_id:
            return JobKeys(self.settings.key_prefix, req.job_id).deliveries, req.batch_id
        return task_deliveries_key(self.settings.key_prefix), task_id

    def begin(self, req: BatchRequest, task_id: str) -> Delivery:
        """Count this delivery; say whether the batch is already written back."""
        key, field = self._counter(req, task_id)
        pipe = self.redis.pipeline()
        pipe.hincrby(key, field, 1)
        pipe.hget(key, f"{field}:error")
        if req.job_id:
            pipe.sismember(JobKeys(self.settings.key_prefix, req.job_id).done, req.batch_id)
        pipe.expire(key, self.settings.job_ttl)
        out = pipe.execute()
        return Delivery(int(out[0]), out[1], bool(req.job_id and out[2]))

    def record_error(self, req: BatchRequest, task_id: str, reason: str) -> None:
        key, field = self._counter(req, task_id)
        self.redis.hset(key, f"{field}:error", reason)

    def finish(self, req: BatchRequest, task_id: str, results: dict[str, dict], version: dict | None) -> bool:
        """Store a batch's results (a job's) or forget its delivery count (a job-less task).

        `results` maps id -> score fields, or -> {"error": reason}. True when written
        now, False when the batch had already been written back. `version` (model and
        adapter) joins the job's set of versions; None when nothing was scored.
        """
        if not req.job_id:
            key, field = self._counter(req, task_id)
            self.redis.hdel(key, field, f"{field}:error")
            return True
        keys = JobKeys(self.settings.key_prefix, req.job_id)
        scored, failed = [], []
        for item_id, fields in results.items():
            if "error" in fields:
                failed += [item_id, fields["error"]]
            else:
                scored += [item_id, json.dumps(fields, separators=(",", ":"))]
        args = [req.batch_id, f"{time.time():.3f}", json.dumps(version, sort_keys=True) if version else "",
                self.settings.job_ttl, len(scored) // 2, *scored, *failed]
        key_list = [keys.done, keys.scores, keys.failed, keys.meta, keys.versions, keys.deliveries]
        return bool(self._write_back(keys=key_list, args=args))
