"""Coalescing: comments from concurrent requests share one task per policy.

The first comment for a policy opens a batch. It is sent when it holds `max_batch`
comments, or once `window` seconds have passed and no earlier task of this policy
from this server is still waiting in the queue. While one is waiting, no worker
would start a new one any sooner, so the batch keeps filling instead: under load
a batch grows to what arrives while the workers are busy, and N concurrent
requests cost far fewer than N tasks (each task costs a worker its fixed overhead
once). A request alone waits `window` (a few milliseconds) more.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from agile.serve import metrics
from agile.serve.queue_client import TaskQueue, outcome


@dataclass
class _Waiting:
    text: str
    future: asyncio.Future  # resolves to (task result, this comment's fields)
    do_not_store: bool


class Coalescer:
    def __init__(self, queue: TaskQueue, window: float, max_batch: int, deadline: float):
        self.queue = queue
        self.window, self.max_batch, self.deadline = window, max_batch, deadline
        self._open: dict[str, list[_Waiting]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._sending: set[asyncio.Task] = set()  # strong references while they run

    def add(self, policy: str, texts: list[str], do_not_store: bool = False) -> list[asyncio.Future]:
        """One future per text, in order; each resolves to (task result, its result fields)."""
        loop = asyncio.get_running_loop()
        futures = []
        for text in texts:
            waiting = _Waiting(text, loop.create_future(), do_not_store)
            futures.append(waiting.future)
            batch = self._open.setdefault(policy, [])
            batch.append(waiting)
            if len(batch) >= self.max_batch:
                self._flush(policy)
            elif len(batch) == 1:
                self._timers[policy] = loop.call_later(self.window, self._due, policy)
        return futures

    def _due(self, policy: str) -> None:
        """The window has passed: send unless a task of this policy still waits for a worker."""
        if self.queue.queued(policy):
            self._timers[policy] = asyncio.get_running_loop().call_later(self.window, self._due, policy)
        else:
            self._flush(policy)

    def _flush(self, policy: str) -> None:
        timer = self._timers.pop(policy, None)
        if timer is not None:
            timer.cancel()
        batch = self._open.pop(policy, None)
        if batch:
            task = asyncio.create_task(self._send(policy, batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, policy: str, batch: list[_Waiting]) -> None:
        items = [{"id": str(n), "text": w.text} for n, w in enumerate(batch)]
        metrics.TASKS.labels(policy).inc()
        metrics.BATCH_ITEMS.observe(len(items))
        try:
            result_meta = await self.queue.submit(policy, items, self.deadline, any(w.do_not_store for w in batch))
            result = outcome(await result_meta)
        except Exception as exc:
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(exc)
            return
        for n, w in enumerate(batch):
            if not w.future.done():  # a request that timed out has cancelled its futures
                w.future.set_result((result, result["results"].get(str(n), {"error": "missing from the result"})))
