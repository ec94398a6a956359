"""Write-back on a private Redis: exactly once per batch, nothing at all for a job that has ended."""

from __future__ import annotations

import json

import pytest

from agile.models import ModelInfo
from agile.policy import Policy
from agile.policy_set import Scored
from agile.prompt import PromptTemplate
from agile.wire import BatchRequest, JobKeys, task_deliveries_key
from agile.worker.store import Store


@pytest.fixture
def store(redis_settings):
    """A store, and job1 in Redis as Job.create makes it (its meta hash, `created` set)."""
    store = Store(redis_settings)
    store.redis.hset(JobKeys(redis_settings.key_prefix, "job1").meta, mapping={"created": "1", "status": "submitted"})
    return store


def batch(batch_id: str, ids: list[str], empty: tuple[str, ...] = ()) -> BatchRequest:
    return BatchRequest.from_task((), {"items": [{"id": i, "text": "" if i in empty else f"text {i}"} for i in ids],
                                       "job_id": "job1", "batch_id": batch_id})


INFO = ModelInfo("m", "c")
USED = {"a": Policy(PromptTemplate(("A", "B")), "policy-a", "B", version="v1")}


def write(store: Store, req: BatchRequest, task_id: str = "t") -> int:
    """What the worker's task does once policy `a` scored the batch's good rows."""
    todo = [k for k in range(len(req)) if k not in req.problems]
    n = len(todo)
    values = {"p_A": [0.25] * n, "p_B": [0.75] * n, "prediction": ["B"] * n, "truncated": [False] * n}
    return store.finish(req, task_id, {"a": Scored(values)}, todo, INFO, USED)


def test_a_redelivered_batch_is_not_counted_twice(store):
    keys = JobKeys(store.settings.key_prefix, "job1")
    assert write(store, batch("b0", ["0", "1", "2"], empty=("2",))) == 1
    assert write(store, batch("b0", ["0", "1", "2"])) == 0
    assert write(store, batch("b1", ["3"])) == 1
    r = store.redis
    meta = r.hgetall(keys.meta)
    assert (int(meta["scored"]), int(meta["failed"])) == (3, 1)
    record = json.loads(r.hget(keys.results, "b0"))
    assert "ids" not in record and record["n"] == 3 and record["errors"] == {"2": "text is empty"}
    assert record["columns"] == {"a": {"values": {"p_A": [0.25, 0.25], "p_B": [0.75, 0.75],
                                                  "prediction": ["B", "B"], "truncated": [False, False]}}}
    assert record["model"] == "m" and "errors" not in json.loads(r.hget(keys.results, "b1"))
    assert (record["policies"], record["names"], record["versions"], record["positive_labels"]) == (
        ["a"], {"a": "policy-a"}, {"a": "v1"}, {"a": "B"})
    assert r.smembers(keys.done) == {"b0", "b1"}
    assert [json.loads(v) for v in r.smembers(keys.versions)] == [
        {"model": "m", "model_checksum": "c", "adapters": {"a": "v1"}}]
    assert 0 < r.ttl(keys.results) <= store.settings.job_ttl


def test_deliveries_are_counted_until_written_back(store):
    req = batch("b7", ["x"])
    assert store.begin(req, "task").count == 1
    store.record_error(req, "task", "RuntimeError: boom")
    second = store.begin(req, "task")
    assert (second.count, second.last_error, second.already_done) == (2, "RuntimeError: boom", False)
    write(store, req, "task")
    assert store.begin(req, "task").already_done
    keys = JobKeys(store.settings.key_prefix, "job1")
    assert store.redis.hget(keys.deliveries, "b7:error") is None


@pytest.mark.parametrize("state", ["delivered", "cancelled"])
def test_a_job_that_ended_takes_no_write_and_gets_no_key_back(store, state):
    keys = JobKeys(store.settings.key_prefix, "job1")
    store.redis.hset(keys.meta, mapping={"status": state, "created": "1"})
    req = batch("b3", ["x", "y"])
    assert store.begin(req, "task").gone
    assert write(store, req, "task") == -1
    assert store.refuse("job1", "b3", 2, "bad") == -1
    store.record_error(req, "task", "RuntimeError: late")
    assert sorted(store.redis.keys("*")) == [keys.meta]
    assert store.redis.hget(keys.meta, "scored") is None


def test_a_job_whose_keys_are_gone_is_not_made_again(store):
    """After a FLUSHALL (or an expiry, or Redis restarted empty) a late write-back recreates nothing:
    a half job without `created` is one `agile cancel` cannot open, so it could never be removed."""
    store.redis.flushall()
    req = batch("b0", ["x", "y"])
    assert store.begin(req, "task").gone
    store.record_error(req, "task", "RuntimeError: late")
    assert write(store, req, "task") == -1
    assert store.refuse("job1", "b0", 2, "bad") == -1
    assert store.redis.keys("*") == []


def test_a_refused_batch_fails_its_rows_so_the_job_ends(store):
    keys = JobKeys(store.settings.key_prefix, "job1")
    store.redis.hset(keys.inflight, "b2", 100)
    assert store.refuse("job1", "b2", 5, "payload refused: labels must be ...") == 1
    assert json.loads(store.redis.hget(keys.results, "b2")) == {"error": "payload refused: labels must be ...",
                                                                "n": 5}
    assert int(store.redis.hget(keys.meta, "failed")) == 5
    assert store.redis.sismember(keys.done, "b2") and not store.redis.hexists(keys.inflight, "b2")


def test_a_task_without_a_job_counts_deliveries_by_task_id_and_they_expire(store):
    req = BatchRequest.from_task((), {"items": [{"id": "x", "text": "t"}]})
    assert store.begin(req, "task-1").count == 1
    assert store.begin(req, "task-1").count == 2
    assert store.begin(req, "task-2").count == 1
    key = task_deliveries_key(store.settings.key_prefix)
    assert 0 < store.redis.ttl(key) <= store.settings.job_ttl
    write(store, req, "task-1")
    assert store.begin(req, "task-1").count == 1


def test_begin_rides_out_a_redis_restart(private_redis, redis_settings, monkeypatch):
    """Redis down while a delivery is counted: retried until it is back, never a lost batch."""
    import threading

    import agile.worker.store as store_module

    monkeypatch.setattr(store_module, "RETRY_SECONDS", 30.0)
    store = Store(redis_settings.with_(redis_url=private_redis.url))
    private_redis.kill()
    threading.Timer(2.0, private_redis.start).start()
    delivery = store.begin(BatchRequest.from_task((), {"items": [{"id": "x", "text": "t"}]}), "t")  # no job:
    assert delivery.count == 1 and not delivery.gone  # an emptied Redis has none until its producer restores it


def test_a_write_back_wakes_a_waiting_producer_at_once(store):
    """The producer blocks on the job's `wake` list (Job.wait) instead of sleeping a poll interval; each
    first write-back of a batch pushes a token, a repeated one does not."""
    import threading
    import time

    from agile.producer.jobs import Job

    keys = JobKeys(store.settings.key_prefix, "job1")
    job = Job.open(store.settings, "job1")
    started = time.monotonic()
    job.wait(0.3)  # nothing written: waits its timeout out
    assert time.monotonic() - started >= 0.25
    threading.Timer(0.5, lambda: write(store, batch("b0", ["0", "1"]))).start()
    started = time.monotonic()
    job.wait(30)  # woken by the write-back, not the timeout
    assert time.monotonic() - started < 10
    assert store.redis.llen(keys.wake) == 0  # the tokens of that moment are taken
    assert write(store, batch("b0", ["0", "1"])) == 0 and store.redis.llen(keys.wake) == 0  # a redelivery: no token
    for n in range(40):
        write(store, batch(f"b{n + 1}", ["0"]))
    assert store.redis.llen(keys.wake) == 16  # bounded however many batches come back unread
    assert store.redis.ttl(keys.wake) > 0
