"""Results out of Redis (the machine's Redis, own key prefix): drained, synced, never lost or doubled."""

from __future__ import annotations

import json
import uuid

import pandas as pd
import pytest

from agile.producer.results import PAGE_END, Drain
from agile.settings import QueueSettings
from agile.wire import BatchRequest, JobKeys
from agile.worker.store import Store


@pytest.fixture
def job():
    settings = QueueSettings(redis_url="redis://127.0.0.1:6379/0", key_prefix=f"test-{uuid.uuid4().hex[:8]}")
    store = Store(settings)
    req = BatchRequest.from_task((), {"items": [{"id": i, "text": "t"} for i in ("x", "y", "z", "bad")],
                                      "job_id": "j", "batch_id": "b0"})
    fields = {"p_Toxic": 0.7, "p_Safe": 0.3, "prediction": "Toxic", "flagged": True, "truncated": False}
    store.finish(req, "t", {"x": fields, "y": fields, "z": fields, "bad": {"error": "text is empty"}}, None)
    yield store.redis, JobKeys(settings.key_prefix, "j")
    keys = list(store.redis.scan_iter(f"{settings.key_prefix}:*"))
    if keys:
        store.redis.delete(*keys)


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_results_drain_redis_into_any_format(job, tmp_path, suffix):
    redis, keys = job
    drain = Drain(redis, keys, tmp_path / f"out.{suffix}")
    assert drain.step() == 4
    assert redis.hlen(keys.scores) == 0 and redis.hlen(keys.failed) == 0
    assert drain.finish() == 4
    frame = {"csv": pd.read_csv, "jsonl": lambda p: pd.read_json(p, lines=True), "parquet": pd.read_parquet}[
        suffix](tmp_path / f"out.{suffix}")
    assert list(frame.columns) == ["id", "p_Toxic", "p_Safe", "prediction", "flagged", "truncated", "error"]
    assert sorted(frame["id"]) == ["bad", "x", "y", "z"]
    assert frame.set_index("id").loc["bad", "error"] == "text is empty"
    assert dict(drain.predictions) == {"Toxic": 3, "failed": 1}
    assert not list(tmp_path.glob(".out.*"))  # spools removed


def test_a_crash_between_sync_and_delete_writes_nothing_twice(job, tmp_path):
    redis, keys = job
    out = tmp_path / "out.csv"
    spool = tmp_path / f".out.csv.{keys.job_id}.scores.jsonl"
    row = {"p_Toxic": 0.7, "p_Safe": 0.3, "prediction": "Toxic", "flagged": True, "truncated": False, "error": ""}
    # a previous run synced x and y, died before deleting them from Redis, and left half a line
    spool.write_text(json.dumps({"id": "x", **row}) + "\n" + json.dumps({"id": "y", **row}) + "\n"
                     + PAGE_END + "\n" + '{"id": "z", "p_To')
    drain = Drain(redis, keys, out)
    drain.step()
    drain.finish()
    ids = sorted(pd.read_csv(out)["id"])
    assert ids == ["bad", "x", "y", "z"]
