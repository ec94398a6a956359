"""Write-back against the machine's Redis (own key prefix, removed afterwards): exactly once per batch."""

from __future__ import annotations

import json
import uuid

import pytest

from agile.settings import QueueSettings
from agile.wire import BatchRequest, JobKeys
from agile.worker.store import Store


@pytest.fixture
def store():
    settings = QueueSettings(redis_url="redis://127.0.0.1:6379/0", key_prefix=f"test-{uuid.uuid4().hex[:8]}")
    s = Store(settings)
    yield s
    keys = list(s.redis.scan_iter(f"{settings.key_prefix}:*"))
    if keys:
        s.redis.delete(*keys)


def batch(batch_id: str, ids: list[str]) -> BatchRequest:
    return BatchRequest.from_task((), {"items": [{"id": i, "text": f"text {i}"} for i in ids],
                                       "job_id": "job1", "batch_id": batch_id})


def results(ids, failed=()) -> dict:
    out = {i: {"p_A": 0.25, "p_B": 0.75, "prediction": "B", "truncated": False} for i in ids}
    out.update({i: {"error": "text is empty"} for i in failed})
    return out


def test_a_redelivered_batch_is_not_counted_twice(store):
    keys = JobKeys(store.settings.key_prefix, "job1")
    version = {"model": "m", "model_checksum": "c", "adapter": "a", "adapter_version": "v1"}
    assert store.finish(batch("b0", ["1", "2", "3"]), "t", results(["1", "2"], failed=["3"]), version)
    assert not store.finish(batch("b0", ["1", "2", "3"]), "t", results(["1", "2", "3"]), version)
    assert store.finish(batch("b1", ["4"]), "t", results(["4"]), version)
    r = store.redis
    meta = r.hgetall(keys.meta)
    assert (int(meta["scored"]), int(meta["failed"])) == (3, 1)
    assert r.hlen(keys.scores) == 3 and r.hget(keys.failed, "3") == "text is empty"
    assert json.loads(r.hget(keys.scores, "1"))["prediction"] == "B"
    assert r.smembers(keys.done) == {"b0", "b1"}
    assert [json.loads(v) for v in r.smembers(keys.versions)] == [version]
    assert 0 < r.ttl(keys.scores) <= store.settings.job_ttl


def test_deliveries_are_counted_until_written_back(store):
    req = batch("b7", ["x"])
    assert store.begin(req, "task").count == 1
    store.record_error(req, "task", "RuntimeError: boom")
    second = store.begin(req, "task")
    assert (second.count, second.last_error, second.already_done) == (2, "RuntimeError: boom", False)
    store.finish(req, "task", results(["x"]), None)
    assert store.begin(req, "task").already_done
    keys = JobKeys(store.settings.key_prefix, "job1")
    assert store.redis.hget(keys.deliveries, "b7:error") is None


def test_a_task_without_a_job_counts_deliveries_by_task_id(store):
    req = BatchRequest.from_task((), {"items": [{"id": "x", "text": "t"}]})
    assert store.begin(req, "task-1").count == 1
    assert store.begin(req, "task-1").count == 2
    assert store.begin(req, "task-2").count == 1
    store.finish(req, "task-1", results(["x"]), None)
    assert store.begin(req, "task-1").count == 1
