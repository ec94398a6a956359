"""A small client for services that score their own comments through the same queue.

    client = ScoringClient(adapter="ethos-hate")
    job = client.submit([("c1", "some comment"), ("c2", "another")])
    for comment_id, result in client.results(job):   # streams, draining Redis
        ...
    client.score([("c3", "one more")])                # submit + wait, as a dict

Big inputs go through `submit` (a job with backpressure and repair; rows are
keyed by position like a file's, so ids are the caller's own business); a
handful of comments can also take the plain Celery way, `score_now`, which is
what a service in another language does (docs/QUEUE.md): one task, unique ids.
No torch or keras is imported here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator

from agile.broker import sender
from agile.producer.commands import run_job, sized
from agile.producer.jobs import Job
from agile.producer.payload import check_policy
from agile.producer.repair import Repair
from agile.producer.results import drain_pages, record_results
from agile.producer.source import MemorySource, Plan, batches
from agile.settings import QueueSettings
from agile.wire import TASK_NAME, BatchRequest, lanes


class ScoringClient:
    def __init__(self, settings: QueueSettings | None = None, adapter: str | None = None,
                 model: str | None = None, labels: list[str] | None = None, instructions: str | None = None):
        self.settings = settings or QueueSettings.from_env()
        self.policy = {k: v for k, v in dict(adapter=adapter, model=model, labels=labels,
                                             instructions=instructions).items() if v is not None}
        check_policy([self.policy])
        self.redis = self.settings.redis_client()
        self.settings = sized(self.settings, self.redis)
        self.app = sender(self.settings)
        self._sources: dict[str, MemorySource] = {}  # job id -> its rows, to resend lost batches

    def submit(self, items: Iterable[tuple[str, str]]) -> Job:
        """Queue (id, text) pairs as one job; returns once every batch is queued."""
        source = MemorySource(tuple((str(i), t) for i, t in items))
        size = self.settings.batch_size
        plan = Plan(len(source.items), -(-len(source.items) // size), 0, batch_size=size)
        job = Job.create(self.settings, [self.policy], plan, size, {"source_kind": "client"}, self.redis)
        self._sources[job.job_id] = source
        run_job(self.settings, job, source)
        return job

    def results(self, job: Job, timeout: float | None = None) -> Iterator[tuple[str, dict]]:
        """(id, result) as batches are written back, until every batch is in; drains Redis."""
        deadline = None if timeout is None else time.monotonic() + timeout
        source = self._sources[job.job_id]
        size, seen = job.batch_size, set()
        repair = Repair(job)
        while len(seen) < job.total_batches:
            repair.restore()
            for page in drain_pages(self.redis, job.keys):
                for batch_id, raw in page:
                    if batch_id in seen:
                        continue
                    seen.add(batch_id)
                    record = json.loads(raw)
                    start = int(batch_id[1:]) * size
                    chunk = source.items[start:start + size]
                    for (item_id, _), result in zip(chunk, record_results(record, len(chunk)).rows(), strict=True):
                        # one policy: a record's {policy: fields} per row is just that policy's fields
                        yield item_id, result if "error" in result else next(iter(result.values()))
            if len(seen) >= job.total_batches:
                break
            if repair.stalled():
                repair.resend(batches(source.chunks(), size))
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job.job_id} not complete after {timeout:.0f} s")
            job.wait()
        job.delivered("client")
        self._sources.pop(job.job_id, None)

    def score(self, items: Iterable[tuple[str, str]], timeout: float | None = None) -> dict[str, dict]:
        """Submit and wait: {id: {"p_<label>": ..., "prediction": ...} or {"error": ...}}; ids must be unique."""
        items = list(items)
        ids = [str(i) for i, _ in items]
        if len(set(ids)) != len(ids):
            raise ValueError("score() returns a dict keyed by id: ids must be unique (use submit/results)")
        return dict(self.results(self.submit(items), timeout))

    def score_now(self, items: Iterable[tuple[str, str]], timeout: float = 60) -> dict:
        """One task, the plain Celery way: send_task, then .get() (at most 1024 comments, unique ids).

        It goes to the interactive lane, as `agile serve`'s requests do: someone waits on it.
        """
        items = list(items)
        req = BatchRequest([t for _, t in items], [str(i) for i, _ in items], **self.policy)
        result = self.app.send_task(TASK_NAME, kwargs=req.to_kwargs(), queue=lanes(self.settings.queue)[0])
        try:
            return result.get(timeout)
        finally:
            result.forget()  # read once: nothing of it stays in the result backend
