"""`agile.score_batch` on redis.asyncio: publish the Celery message, read the result, forget it.

The server is a Celery client without Celery (docs/QUEUE.md, "without a Celery
client"): it pushes protocol-2 JSON messages onto the queue's Redis list and reads
`celery-task-meta-<id>` from the result backend, which it deletes as soon as it is
read. One poller reads every pending result with one pipelined round trip per tick
(an MGET of the results, and whether each queued task has been taken by a worker,
which the coalescer waits for), so the cost does not grow with the number of
waiting requests. Each message carries an
`expires` time (the request's deadline): a worker drops a task nobody waits for.
Messages say `kwargsrepr: "{...}"`, so comment texts never reach Flower or logs.
They go to the fleet's interactive lane (agile.wire.lanes), which every worker takes
from before the bulk queue: a request waits for the batch a worker has in hand, never
for a bulk job's backlog.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from redis.exceptions import RedisError

from agile.broker import RESULT_PREFIX, UNACKED, message, queue_depth
from agile.settings import QueueSettings
from agile.wire import lanes

log = logging.getLogger("agile.serve")

READY = ("SUCCESS", "FAILURE", "REVOKED")
POLL_SECONDS = 0.004
ACK_WAIT_SECONDS = 2.0  # how long a doNotStore reply waits for the worker to drop the message
LATE_SECONDS = 300  # after its deadline, how long a result is still watched for (to delete it)
DEPTH_CACHE_SECONDS = 0.02


class TaskFailed(Exception):
    """The task failed as a whole: `kind` is the worker's exception type (AdapterError, ...)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class _Pending:
    future: asyncio.Future
    adapter: str
    delivery_tag: str
    wait_ack: bool
    expires: float  # monotonic: a worker drops the task after this
    taken: bool = False  # a worker holds it (kombu's unacked hash has its delivery tag)

    @property
    def give_up_at(self) -> float:
        return self.expires + LATE_SECONDS




def outcome(meta: dict) -> dict:
    """The task's return value, or TaskFailed with the worker's reason."""
    if meta.get("status") == "SUCCESS":
        return meta["result"]
    result = meta.get("result") or {}
    reason = result.get("exc_message") if isinstance(result, dict) else result
    if isinstance(reason, list):
        reason = " ".join(str(x) for x in reason)
    kind = (result.get("exc_type") if isinstance(result, dict) else None) or meta.get("status", "FAILURE")
    raise TaskFailed(str(kind), str(reason or kind))


class TaskQueue:
    def __init__(self, settings: QueueSettings, redis):
        self.settings = settings
        self.redis = redis  # a redis.asyncio client with decode_responses=True
        self._pending: dict[str, _Pending] = {}
        self._poller: asyncio.Task | None = None
        self._depth = (0.0, 0)  # (monotonic time read, messages waiting)
        self._acks: set[asyncio.Task] = set()  # doNotStore results waiting for the worker's ack
        self._sync = None  # a redis-py client for agile.broker's depth reading (health checks only)
        self.lane = lanes(settings.queue)[0]  # the interactive queue this server's tasks go to

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def waiting(self) -> int:
        """Messages waiting in the interactive lane (every server's), read at most every few milliseconds."""
        read_at, depth = self._depth
        if time.monotonic() - read_at > DEPTH_CACHE_SECONDS:
            depth = await self.redis.llen(self.lane)
            self._depth = (time.monotonic(), depth)
        return depth

    def queued(self, adapter: str) -> int:
        """This server's tasks for `adapter` that no worker has taken yet (and whose deadline is ahead)."""
        now = time.monotonic()
        return sum(1 for p in self._pending.values() if p.adapter == adapter and not p.taken and now < p.expires)

    async def depth(self) -> tuple[int, int]:
        """(waiting in both lanes, in flight), as the workers' metrics read it."""
        if self._sync is None:  # no retries: a health check must answer now, not after Redis is back
            import redis

            self._sync = redis.Redis.from_url(self.settings.redis_url, decode_responses=True,
                                              socket_connect_timeout=2, socket_timeout=5)
        return await asyncio.to_thread(queue_depth, self._sync, *lanes(self.settings.queue))

    async def submit(self, adapter: str, items: list[dict], deadline_s: float, wait_ack: bool) -> asyncio.Future:
        """Queue one task; the future resolves to its Celery result meta (already deleted in Redis)."""
        task_id, tag = str(uuid.uuid4()), str(uuid.uuid4())
        expires = datetime.now(timezone.utc) + timedelta(seconds=deadline_s)
        pending = _Pending(asyncio.get_running_loop().create_future(), adapter, tag, wait_ack,
                           time.monotonic() + deadline_s)
        self._pending[task_id] = pending  # before the push: a fast worker's result must find it
        try:
            body = message(task_id, tag, self.lane, {"items": items, "adapter": adapter}, expires)
            await self.redis.lpush(self.lane, body)
        except BaseException:
            self._pending.pop(task_id, None)
            raise
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        return pending.future

    async def _poll(self) -> None:
        while self._pending:
            try:
                await self._tick()
            except RedisError as exc:  # Redis restarting: the requests' own deadlines answer them
                log.warning("reading results failed: %s", exc)
                await asyncio.sleep(0.5)
            except Exception:  # a bad result must not stop the results of everyone else
                log.exception("result poller")
                await asyncio.sleep(0.5)
            await asyncio.sleep(POLL_SECONDS)

    async def _tick(self) -> None:
        ids = list(self._pending)
        for start in range(0, len(ids), 512):
            chunk = ids[start:start + 512]
            untaken = [i for i in chunk if i in self._pending and not self._pending[i].taken]
            pipe = self.redis.pipeline(transaction=False)
            pipe.mget([RESULT_PREFIX + i for i in chunk])
            for task_id in untaken:
                pipe.hexists(UNACKED, self._pending[task_id].delivery_tag)
            values, *taken = await pipe.execute()
            for task_id, held in zip(untaken, taken, strict=True):
                if held and task_id in self._pending:
                    self._pending[task_id].taken = True
            ready = {}
            now = time.monotonic()
            for task_id, raw in zip(chunk, values, strict=True):
                if raw is not None:
                    meta = json.loads(raw)
                    if meta.get("status") in READY:
                        ready[task_id] = meta
                elif task_id in self._pending and now > self._pending[task_id].give_up_at:
                    self._resolve(self._pending.pop(task_id), exc=TimeoutError(f"task {task_id} never answered"))
            if ready:
                await self.redis.delete(*[RESULT_PREFIX + i for i in ready])
            for task_id, meta in ready.items():
                pending = self._pending.pop(task_id, None)
                if pending is None:
                    continue
                if pending.wait_ack:
                    task = asyncio.create_task(self._after_ack(pending, meta))
                    self._acks.add(task)
                    task.add_done_callback(self._acks.discard)
                else:
                    self._resolve(pending, meta)

    async def _after_ack(self, pending: _Pending, meta: dict) -> None:
        """Resolve once the worker has acknowledged: then no copy of the message is left in Redis."""
        deadline = time.monotonic() + ACK_WAIT_SECONDS
        try:
            while await self.redis.hexists(UNACKED, pending.delivery_tag) and time.monotonic() < deadline:
                await asyncio.sleep(POLL_SECONDS)
        except RedisError as exc:
            log.warning("could not check the acknowledgement of a doNotStore task: %s", exc)
        self._resolve(pending, meta)

    @staticmethod
    def _resolve(pending: _Pending, meta: dict | None = None, exc: BaseException | None = None) -> None:
        if pending.future.done():
            return
        if exc is not None:
            pending.future.set_exception(exc)
        else:
            pending.future.set_result(meta)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        while self._pending:
            self._resolve(self._pending.popitem()[1], exc=ConnectionError("the server is shutting down"))
