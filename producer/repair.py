"""Repairing a job the queue lost part of: restore an emptied Redis, notice a stall, send lost batches again.

The queue cannot promise that nothing is lost (a Redis restart without
persistence drops messages and keys), so a job that stops moving re-sends the
batches below its submission frontier that were never written back; keyed
writes make that safe. A Redis that came back empty gets the job's meta and the
batches already collected (`restore`) before anything is re-sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from agile.broker import queue_depth
from agile.producer.jobs import Job
from agile.producer.source import Batch

IDLE_STALL_SECONDS = 5.0  # queue empty, nothing in flight, no progress: batches were lost

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


class Repair:
    """Watches one job from the process that carries it: when it last moved, and what to send again."""

    def __init__(self, job: Job):
        self.job = job
        self._last_done, self._last_move = -1, time.monotonic()
        self._restore = job.redis.register_script(RESTORE)

    def restore(self, collected: Callable[[], dict[str, tuple[int, int]]] = dict) -> bool:
        """If Redis lost the job, put its meta back and mark the batches already collected
        (`collected()`: batch id -> (scored, failed)) as done."""
        job = self.job
        if job.redis.hexists(job.keys.meta, "created"):
            return False
        static = [x for pair in job.meta.items() for x in pair]
        triples = [x for bid, (s, f) in collected().items() for x in (bid, s, f)]
        self._restore(keys=[job.keys.meta, job.keys.done],
                      args=[job.settings.job_ttl, len(job.meta), *static, *triples])
        self._last_done = -1
        return True

    def stalled(self) -> bool:
        """No batch written back for a while, and none could still be on its way."""
        job = self.job
        done, now = job.redis.scard(job.keys.done), time.monotonic()
        if done != self._last_done:
            self._last_done, self._last_move = done, now
            return False
        idle = now - self._last_move
        if idle <= IDLE_STALL_SECONDS:
            return False
        waiting, held = queue_depth(job.redis, job.settings.queue)
        # Batches still queued, or held by a worker (a dead one's come back after the
        # visibility timeout), are not lost: wait. An idle queue means they were. On a
        # queue others keep busy, repair anyway after a long wait (at worst, work twice).
        return (waiting == 0 and held == 0) or idle > 2 * job.settings.visibility_timeout + 60

    def resend(self, batches: Iterator[Batch]) -> int:
        """Send again every batch below the frontier that was never written back; returns how many."""
        job = self.job
        done = job.redis.smembers(job.keys.done)
        resent = 0
        for batch in batches:
            if batch.number >= job.next_batch:
                break
            if batch.id not in done:
                job.send(batch, resend=True)
                resent += 1
        self._last_move = time.monotonic()
        return resent
