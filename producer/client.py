"""A small client for services that score their own comments through the same queue.

    client = ScoringClient(adapter="ethos-hate")
    job = client.submit([("c1", "some comment"), ("c2", "another")])
    for comment_id, result in client.results(job):   # streams, draining Redis
        ...
    client.score([("c3", "one more")])                # submit + wait, as a dict

Big inputs go through `submit` (a job with backpressure and repair); a handful of
comments can also take the plain Celery way, `score_now`, which is what a service
in another language does (docs/QUEUE.md). No torch or keras is imported here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from agile.producer.batches import make_batches
from agile.producer.jobs import POLL_SECONDS, Job, celery_app
from agile.producer.results import drain_pages
from agile.settings import QueueSettings
from agile.wire import TASK_NAME, BatchRequest, Item


class ScoringClient:
    def __init__(self, settings: QueueSettings | None = None, adapter: str | None = None,
                 model: str | None = None, labels: list[str] | None = None, instructions: str | None = None):
        self.settings = settings or QueueSettings.from_env()
        self.template = dict(adapter=adapter, model=model, labels=labels, instructions=instructions)
        self.redis = self.settings.redis_client()
        self.app = celery_app(self.settings)
        self._items: dict[str, list[tuple[str, str]]] = {}  # job id -> items, to resend lost batches

    def submit(self, items: Iterable[tuple[str, str]]) -> Job:
        """Queue (id, text) pairs as one job; returns once every batch is queued."""
        items = [(str(i), t) for i, t in items]
        job = Job(self.settings, redis=self.redis, app=self.app)
        job.create(**self.template, source={"source": "client"})
        self._items[job.job_id] = items
        job.submit(make_batches(items, self.settings.batch_size), source=self._source(job.job_id))
        return job

    def _source(self, job_id: str):
        return lambda: make_batches(self._items[job_id], self.settings.batch_size)

    def results(self, job: Job, timeout: float | None = None) -> Iterator[tuple[str, dict]]:
        """(id, result) as they are written back, until the job is complete; drains Redis."""
        deadline = None if timeout is None else time.monotonic() + timeout
        source = self._source(job.job_id) if job.job_id in self._items else None
        while True:
            complete = job.poll(source).complete  # read first: all written before it gets drained below
            for _, rows in drain_pages(self.redis, job.keys):
                for row in rows:
                    item_id = row.pop("id")
                    if not row["error"]:
                        del row["error"]
                    yield item_id, row
            if complete:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job.job_id} not complete after {timeout:.0f} s")
            time.sleep(POLL_SECONDS)
        job.delete()
        self._items.pop(job.job_id, None)

    def score(self, items: Iterable[tuple[str, str]], timeout: float | None = None) -> dict[str, dict]:
        """Submit and wait: {id: {"p_<label>": ..., "prediction": ...} or {"error": ...}}."""
        return dict(self.results(self.submit(items), timeout))

    def score_now(self, items: Iterable[tuple[str, str]], timeout: float = 60) -> dict:
        """One task, the plain Celery way: send_task, then .get() (at most 1024 comments)."""
        req = BatchRequest([Item(str(i), t) for i, t in items],
                           **{k: v for k, v in self.template.items() if v is not None})
        return self.app.send_task(TASK_NAME, kwargs=req.to_kwargs(), queue=self.settings.queue).get(timeout)
