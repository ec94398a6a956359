"""One process carries a job on at a time: a lease in Redis, renewed while it works.

`agile submit`, `agile results` and `agile moderate` take the job's lease before they
send or collect anything. A second process finds it held and stops with one line
naming the holder (host/pid, and what it does), instead of sharing the spool with it
and looping on batches the first one already took. The holder renews the lease from
a thread every RENEW_SECONDS; a process that dies stops renewing and its lease lapses
after LEASE_SECONDS, so a later run takes over (on the same host at once, once the
holder's process is gone; Ctrl-C releases it anyway). A Redis that came back empty
gets the lease back from its holder at the next renewal.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from redis.exceptions import RedisError

from agile.producer.jobs import Job, JobError

LEASE_SECONDS = 30.0
RENEW_SECONDS = 5.0

# KEYS: lease, meta. ARGV: our value, ms. 1 renewed (or taken back from an emptied Redis),
# 0 another process holds it, -1 the job ended (nothing to hold).
RENEW = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if v then return 0 end
local s = redis.call('HGET', KEYS[2], 'status')
if s == 'delivered' or s == 'cancelled' then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _gone(pid: int) -> bool:
    """Whether process `pid` of this host has ended (a zombie counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class Lease:
    """`with Lease(job, "collecting it into OUT"):` holds the job's lease for the block, or raises JobError."""

    def __init__(self, job: Job, doing: str):
        self.job, self.doing = job, doing
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.value = json.dumps({"holder": f"{self.host}/{self.pid}", "doing": doing, "since": time.time(),
                                 "token": uuid.uuid4().hex})
        self.keys = [job.lease_key, job.keys.meta]
        self._renew = job.redis.register_script(RENEW)
        self._release = job.redis.register_script(RELEASE)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, name="agile-lease", daemon=True)
        self.taken_by: str | None = None  # set when another process took the lease over

    def __enter__(self) -> Lease:
        self._take()
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(5)
        with contextlib.suppress(RedisError):  # else it lapses on its own
            self._release(keys=self.keys[:1], args=[self.value])

    def _take(self) -> None:
        redis = self.job.redis
        for _ in range(3):
            if redis.set(self.job.lease_key, self.value, nx=True, px=int(LEASE_SECONDS * 1000)):
                return
            held = redis.get(self.job.lease_key)
            if held is None:
                continue  # it lapsed just now
            try:
                holder = json.loads(held)
                host, pid = holder["holder"].rsplit("/", 1)
                dead = host == self.host and _gone(int(pid))
            except (ValueError, KeyError, TypeError, AttributeError):
                holder, dead = {"holder": "an unknown process", "doing": "holding it", "since": 0}, False
            if dead:  # its process ended without releasing it (killed): take over now
                self._release(keys=self.keys[:1], args=[held])
                continue
            since = time.strftime("%H:%M:%S UTC", time.gmtime(float(holder.get("since") or 0)))
            raise JobError(f"job {self.job.job_id} is being carried on by {holder['holder']} since {since} "
                           f"({holder.get('doing')}); one process at a time: wait for it to end, or stop it "
                           f"(its lease lapses {LEASE_SECONDS:.0f} s after it stops)")
        raise JobError(f"job {self.job.job_id}: could not take its lease; another process keeps taking it")

    def _keep(self) -> None:
        while not self._stop.wait(RENEW_SECONDS):
            try:
                if self._renew(keys=self.keys, args=[self.value, int(LEASE_SECONDS * 1000)]) == 0:
                    held = self.job.redis.get(self.job.lease_key) or "{}"
                    self.taken_by = json.loads(held).get("holder", "another process")
                    return
            except (RedisError, ValueError):
                continue  # Redis away for a moment: try again at the next beat

    def check(self) -> None:
        """Raise JobError if another process took the lease over (this one was stopped longer than the lease)."""
        if self.taken_by:
            raise JobError(f"job {self.job.job_id}: {self.taken_by} took it over while this process was "
                           f"{self.doing} (this one stalled past its lease); this one stops, that one goes on")
