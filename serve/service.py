"""Between the routes and the queue: admission (429), deadlines (504), and reading a policy's score.

Routes stay thin: they check their own request shape, then ask `Service.score` for
every (policy, comment) pair at once, which coalesces them into tasks and waits
once, under one deadline, for all of them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from redis.exceptions import RedisError

from agile.serve import metrics
from agile.serve.attributes import AttributeMap
from agile.serve.batcher import Coalescer
from agile.serve.errors import ApiError
from agile.serve.queue_client import TaskFailed, TaskQueue
from agile.serve.settings import ServeSettings
from agile.wire import text_problem


@dataclass(frozen=True)
class Scored:
    """One comment under one policy: the score, or why there is none."""

    probability: float = 0.0
    flagged: bool = False
    label: str = ""
    threshold: float = 0.5
    version: str = ""
    truncated: bool = False
    model: str = ""
    error: str | None = None


def comment_problem(text: str, max_bytes: int) -> str | None:
    """Why the server will not score this text: Perspective's size first (AGILE_SERVE_MAX_TEXT_BYTES, at
    most the workers' MAX_TEXT_CHARS, so their character limit is never the one cited), then the
    workers' own rules."""
    size = len(text.encode("utf-8", "surrogatepass"))  # an unpaired surrogate is text_problem's to name
    if size > max_bytes:
        return f"text is {size:,} bytes of UTF-8; the limit is {max_bytes:,} bytes"
    return text_problem(text)


def read_score(policy: str, result: dict, fields: dict) -> Scored:
    if "error" in fields:
        return Scored(error=fields["error"])
    positive = result.get("positive_label")
    if positive is None:
        raise ApiError(500, f"policy {policy!r}: the workers' result has no positive_label "
                            "(workers older than this server, or a zero-shot policy)")
    return Scored(float(fields[f"p_{positive}"]), bool(fields["flagged"]), positive, float(result["threshold"]),
                  str(result.get("adapter_version", "")), bool(fields.get("truncated")), str(result.get("model", "")))


class Service:
    def __init__(self, settings: ServeSettings, attributes: AttributeMap, queue: TaskQueue):
        self.settings, self.attributes, self.queue = settings, attributes, queue
        self.coalescer = Coalescer(queue, settings.coalesce_ms / 1000, settings.max_batch, settings.timeout)

    async def admit(self) -> None:
        """429 while the queue holds more than AGILE_SERVE_MAX_QUEUE waiting tasks."""
        try:
            waiting = await self.queue.waiting()
        except RedisError as exc:
            metrics.REJECTED.labels("redis").inc()
            raise ApiError(503, f"the queue is unreachable: {type(exc).__name__}") from None
        if waiting >= self.settings.max_queue:
            metrics.REJECTED.labels("queue_full").inc()
            raise ApiError(429, f"the scoring queue is full ({waiting} tasks waiting); retry later",
                           headers={"Retry-After": "1"})

    async def score(self, policies: list[str], texts: list[str], do_not_store: bool) -> dict[str, list[Scored]]:
        """{policy: [Scored per text]}; 503 if Redis is down, 504 past the deadline."""
        await self.admit()
        futures = {p: self.coalescer.add(p, texts, do_not_store) for p in policies}
        flat = [f for fs in futures.values() for f in fs]
        try:
            done = await asyncio.wait_for(asyncio.gather(*flat), self.settings.timeout)
        except asyncio.TimeoutError:
            metrics.REJECTED.labels("timeout").inc()
            raise ApiError(504, f"no score within {self.settings.timeout:g} s: the workers are busy or down") from None
        except RedisError as exc:
            metrics.REJECTED.labels("redis").inc()
            raise ApiError(503, f"the queue is unreachable: {type(exc).__name__}") from None
        except TaskFailed as exc:
            raise self._failed(exc) from None
        out, n = {}, 0
        for policy, fs in futures.items():
            out[policy] = [read_score(policy, *done[n + i]) for i in range(len(fs))]
            n += len(fs)
            metrics.COMMENTS.labels(policy).inc(len(fs))
        return out

    @staticmethod
    def _failed(exc: TaskFailed) -> ApiError:
        if exc.kind in ("AdapterError", "LabelError", "PayloadError"):  # the server's configuration
            return ApiError(400, f"the workers refused this policy: {exc}", status="FAILED_PRECONDITION")
        if exc.kind == "TaskRevokedError":
            return ApiError(504, "the workers dropped the task: its deadline had passed")
        return ApiError(500, f"scoring failed ({exc.kind}): {exc}")
